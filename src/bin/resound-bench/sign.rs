//! Signatures the bench computes locally: the signed query string of an HTTP API request
//! (spec 5.2) and the channel auth tokens for private and presence channels (spec 3.2, 3.3).
//!
//! Pure functions, no IO. The bench is a client, so it only ever *produces* signatures; it does
//! not verify them and therefore needs no constant-time comparison.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Lowercase hex HMAC-SHA256 of `message` keyed with `secret` (spec 3.1).
pub fn hmac_sha256_hex(secret: &str, message: &str) -> String {
    // HMAC accepts keys of any length (long keys are hashed, short ones padded), so
    // `new_from_slice` cannot fail here; the empty string keeps the function total.
    let Ok(mut mac) = HmacSha256::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Lowercase hex MD5 of a request body, the `body_md5` parameter.
pub fn body_md5(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// The string an HTTP API request signs: method, path and the canonical query (spec 5.2.2).
///
/// `params` are the query parameters other than `auth_signature`, unescaped; keys are
/// lower-cased and sorted here.
pub fn string_to_sign(method: &str, path: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<(String, &str)> = params
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    sorted.sort();
    let canonical: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{}\n{}\n{}",
        method.to_ascii_uppercase(),
        path,
        canonical.join("&")
    )
}

/// The full query string (without the leading `?`) of a signed API request, ready to append
/// to `path`. `body` is the raw request body; `None` means no `body_md5` is sent.
pub fn signed_query(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    timestamp: u64,
    body: Option<&[u8]>,
) -> String {
    let mut params = vec![
        ("auth_key".to_string(), key.to_string()),
        ("auth_timestamp".to_string(), timestamp.to_string()),
        ("auth_version".to_string(), "1.0".to_string()),
    ];
    if let Some(body) = body {
        params.push(("body_md5".to_string(), body_md5(body)));
    }
    let signature = hmac_sha256_hex(secret, &string_to_sign(method, path, &params));
    params.push(("auth_signature".to_string(), signature));
    let encoded: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect();
    encoded.join("&")
}

/// Percent-encodes everything outside RFC 3986's unreserved set. Written by hand because the
/// bench only ever encodes a handful of short ASCII parameters and needs no other URL code.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The `auth` value for subscribing to a private channel (`channel_data` = `None`) or a presence
/// channel (`channel_data` = the exact string sent in the subscribe message): `key:signature`.
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
    format!("{key}:{}", hmac_sha256_hex(secret, &message))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";

    #[test]
    fn h1_body_md5_and_signature() {
        let body = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(
            body_md5(body.as_bytes()),
            "ec365a775a4cd0599faeb73354201b6f"
        );
        let query = signed_query(
            KEY,
            SECRET,
            "POST",
            "/apps/3/events",
            1353088179,
            Some(body.as_bytes()),
        );
        assert_eq!(
            query,
            "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
             &body_md5=ec365a775a4cd0599faeb73354201b6f\
             &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }

    #[test]
    fn h1_string_to_sign() {
        let params = vec![
            ("auth_version".to_string(), "1.0".to_string()),
            ("auth_key".to_string(), KEY.to_string()),
            (
                "body_md5".to_string(),
                "ec365a775a4cd0599faeb73354201b6f".to_string(),
            ),
            ("auth_timestamp".to_string(), "1353088179".to_string()),
        ];
        assert_eq!(
            string_to_sign("post", "/apps/3/events", &params),
            "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179\
             &auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
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

    #[test]
    fn md5_of_empty_body() {
        assert_eq!(body_md5(b""), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn percent_encoding_leaves_unreserved_alone() {
        assert_eq!(percent_encode("app-key_1.0~"), "app-key_1.0~");
        assert_eq!(percent_encode("a b,c"), "a%20b%2Cc");
    }
}
