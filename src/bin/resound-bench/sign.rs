//! Request and channel-token signing for the publishers and subscribers: the server's own
//! implementation (`resound::protocol::auth`), so the bench and the server can never disagree
//! about a signature.

use resound::protocol::auth;

/// The query string of a signed HTTP API request, as the SDKs build it.
pub fn signed_query(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    timestamp: u64,
    body: Option<&[u8]>,
) -> String {
    auth::signed_query(key, secret, method, path, timestamp, body, &[])
}

/// A private (`channel_data` = `None`) or presence channel token for `socket_id`.
pub fn channel_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    let message = match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    };
    auth::sign_token(key, secret, &message)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";

    #[test]
    fn h1_query_is_signed_like_the_sdks() {
        let body = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let query = signed_query(
            KEY,
            SECRET,
            "POST",
            "/apps/3/events",
            1353088179,
            Some(body.as_bytes()),
        );
        assert!(
            query.contains("body_md5=ec365a775a4cd0599faeb73354201b6f"),
            "{query}"
        );
        assert!(
            query.ends_with(
                "auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
            ),
            "{query}"
        );
    }

    #[test]
    fn p1_private_channel_token() {
        assert_eq!(
            channel_auth(KEY, SECRET, "1234.1234", "private-foobar", None),
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
    }

    #[test]
    fn r1_presence_channel_token() {
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Pusher"}}"#;
        assert_eq!(
            channel_auth(KEY, SECRET, "1234.1234", "presence-foobar", Some(data)),
            "278d425bdf160c739803:afaed3695da2ffd16931f457e338e6c9f2921fa133ce7dac49f529792be6304c"
        );
    }
}
