//! Signatures (protocol.md 3, 5.2): channel authorization, user sign-in and signed HTTP requests.
//!
//! Every token is checked over the exact bytes received and compared in constant time. Nothing
//! here logs; secrets and signatures never leave this module except as booleans.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::SocketId;

type HmacSha256 = Hmac<Sha256>;

/// Lowercase hex HMAC-SHA256 of `message` keyed by `secret`.
pub fn hmac_sha256_hex(secret: &[u8], message: &[u8]) -> String {
    // A HMAC accepts keys of any length, so `new_from_slice` cannot fail; fall back to an
    // impossible-to-match value rather than panicking.
    match HmacSha256::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(message);
            hex::encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

/// Lowercase hex MD5 (the HTTP API's `body_md5`).
pub fn md5_hex(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// Constant-time equality of two ASCII hex strings, ignoring case of `given`.
pub fn hex_eq(expected: &str, given: &str) -> bool {
    if expected.len() != given.len() {
        return false;
    }
    let given = given.to_ascii_lowercase();
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

/// The string a private/encrypted (`channel_data == None`) or presence channel token signs.
pub fn channel_string_to_sign(
    socket_id: SocketId,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// The string a `pusher:signin` token signs.
pub fn signin_string_to_sign(socket_id: SocketId, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// Verifies an `auth` token `"<key>:<hex signature>"` (protocol.md 3.6): split at the first `:`, key
/// compared case-insensitively, signature compared in constant time.
pub fn verify_token(app_key: &str, secret: &str, string_to_sign: &str, token: &str) -> bool {
    let Some((key, signature)) = token.split_once(':') else {
        return false;
    };
    if !key.eq_ignore_ascii_case(app_key) {
        return false;
    }
    let expected = hmac_sha256_hex(secret.as_bytes(), string_to_sign.as_bytes());
    hex_eq(&expected, signature)
}

/// Builds a token the way the server SDKs do (used by tests and the benchmark).
pub fn sign_token(app_key: &str, secret: &str, string_to_sign: &str) -> String {
    format!(
        "{app_key}:{}",
        hmac_sha256_hex(secret.as_bytes(), string_to_sign.as_bytes())
    )
}

/// The canonical query of protocol.md 5.2.2: keys lower-cased, sorted by byte order, `k=v` joined by
/// `&`, values unescaped. `auth_signature` must already be removed.
pub fn canonical_query<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut pairs: Vec<(String, &str)> = params
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    pairs.sort();
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// `auth_signature` for an HTTP API request.
pub fn api_signature(secret: &str, method: &str, path: &str, canonical_query: &str) -> String {
    let to_sign = format!(
        "{}\n{}\n{}",
        method.to_ascii_uppercase(),
        path,
        canonical_query
    );
    hmac_sha256_hex(secret.as_bytes(), to_sign.as_bytes())
}

/// Signs an HTTP API request like the official SDKs: returns the full query string (with
/// `auth_signature`) for `path`. `extra` are the non-auth parameters.
pub fn signed_query(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    timestamp: u64,
    body: Option<&[u8]>,
    extra: &[(&str, &str)],
) -> String {
    let ts = timestamp.to_string();
    let md5 = body.map(md5_hex);
    let mut params: Vec<(&str, &str)> = vec![
        ("auth_key", key),
        ("auth_timestamp", &ts),
        ("auth_version", "1.0"),
    ];
    if let Some(m) = md5.as_deref() {
        params.push(("body_md5", m));
    }
    params.extend_from_slice(extra);
    let canonical = canonical_query(params.iter().copied());
    let sig = api_signature(secret, method, path, &canonical);
    let encoded: Vec<String> = params
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect();
    format!("{}&auth_signature={sig}", encoded.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Fixture {
        credentials: Credentials,
        channel_auth: Vec<ChannelAuth>,
        signin: Vec<Signin>,
        http: Vec<HttpVector>,
        webhooks: Vec<Webhook>,
        md5: std::collections::BTreeMap<String, String>,
    }
    #[derive(Deserialize)]
    struct Credentials {
        key: String,
        secret: String,
    }
    #[derive(Deserialize)]
    struct ChannelAuth {
        id: String,
        socket_id: String,
        channel: String,
        channel_data: Option<String>,
        string_to_sign: String,
        auth: String,
    }
    #[derive(Deserialize)]
    struct Signin {
        id: String,
        socket_id: String,
        user_data: String,
        string_to_sign: String,
        auth: String,
    }
    #[derive(Deserialize)]
    struct HttpVector {
        id: String,
        method: String,
        path: String,
        query: std::collections::BTreeMap<String, String>,
        body: Option<String>,
        string_to_sign: String,
        auth_signature: String,
    }
    #[derive(Deserialize)]
    struct Webhook {
        id: String,
        body: String,
        x_pusher_signature: String,
    }

    fn fixture() -> Fixture {
        let raw = include_str!("../../tests/fixtures/pusher_vectors.json");
        serde_json::from_str(raw).unwrap_or_else(|e| panic!("fixture: {e}"))
    }

    fn sid(s: &str) -> SocketId {
        s.parse().unwrap_or_else(|_| panic!("socket id {s}"))
    }

    #[test]
    fn channel_vectors_p1_p3_r1_r5() {
        let f = fixture();
        for v in &f.channel_auth {
            let s =
                channel_string_to_sign(sid(&v.socket_id), &v.channel, v.channel_data.as_deref());
            assert_eq!(s, v.string_to_sign, "{}", v.id);
            assert_eq!(
                sign_token(&f.credentials.key, &f.credentials.secret, &s),
                v.auth,
                "{}",
                v.id
            );
            assert!(
                verify_token(&f.credentials.key, &f.credentials.secret, &s, &v.auth),
                "{}",
                v.id
            );
        }
    }

    #[test]
    fn signin_vectors_u1_u3() {
        let f = fixture();
        for v in &f.signin {
            let s = signin_string_to_sign(sid(&v.socket_id), &v.user_data);
            assert_eq!(s, v.string_to_sign, "{}", v.id);
            assert!(
                verify_token(&f.credentials.key, &f.credentials.secret, &s, &v.auth),
                "{}",
                v.id
            );
        }
    }

    #[test]
    fn negative_vectors_n1_n3_n8() {
        let f = fixture();
        let (key, secret) = (&f.credentials.key, &f.credentials.secret);
        let p1 = &f.channel_auth[0];
        // N1: P1's token presented on another socket.
        let s = channel_string_to_sign(sid("1234.1235"), "private-foobar", None);
        assert!(!verify_token(key, secret, &s, &p1.auth));
        assert_eq!(
            hmac_sha256_hex(secret.as_bytes(), s.as_bytes()),
            "7fd9c491a0e141b7d4c90e04529c9c9ac7dcb23a9b4f46a31dda86961e1adecf"
        );
        // N2: signed with the wrong secret.
        let s = channel_string_to_sign(sid("1234.1234"), "private-foobar", None);
        let wrong = sign_token(key, "wrong-secret", &s);
        assert!(wrong.ends_with("b2843041f984e9f8cab5be3a1a0ef08277d415c3616a7c7f23c2fa794008eddd"));
        assert!(!verify_token(key, secret, &s, &wrong));
        // N3: R4's token with R5's channel_data and vice versa.
        let r4 = f.channel_auth.iter().find(|v| v.id == "R4");
        let r5 = f.channel_auth.iter().find(|v| v.id == "R5");
        let (Some(r4), Some(r5)) = (r4, r5) else {
            panic!("R4/R5 missing")
        };
        let s5 =
            channel_string_to_sign(sid("123.456"), "presence-room", r5.channel_data.as_deref());
        assert!(!verify_token(key, secret, &s5, &r4.auth));
        let s4 =
            channel_string_to_sign(sid("123.456"), "presence-room", r4.channel_data.as_deref());
        assert!(!verify_token(key, secret, &s4, &r5.auth));
        // N8: U1's signature with a numeric id.
        let s = signin_string_to_sign(sid("1234.1234"), r#"{"id":12345}"#);
        assert!(!verify_token(key, secret, &s, &f.signin[0].auth));
    }

    #[test]
    fn token_key_is_case_insensitive_and_signature_hex_case_too() {
        let f = fixture();
        let p1 = &f.channel_auth[0];
        let upper = p1.auth.to_ascii_uppercase();
        assert!(verify_token(
            &f.credentials.key,
            &f.credentials.secret,
            &p1.string_to_sign,
            &upper
        ));
        let other_key = p1
            .auth
            .replacen("278d425bdf160c739803", "000000000000000000000", 1);
        assert!(!verify_token(
            &f.credentials.key,
            &f.credentials.secret,
            &p1.string_to_sign,
            &other_key
        ));
        assert!(!verify_token(
            &f.credentials.key,
            &f.credentials.secret,
            &p1.string_to_sign,
            "nocolon"
        ));
        assert!(!verify_token(
            &f.credentials.key,
            &f.credentials.secret,
            &p1.string_to_sign,
            ""
        ));
    }

    #[test]
    fn http_vectors_h1_h10() {
        let f = fixture();
        for v in &f.http {
            let params = v.query.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            let canonical = canonical_query(params);
            let s = format!("{}\n{}\n{}", v.method, v.path, canonical);
            assert_eq!(s, v.string_to_sign, "{}", v.id);
            assert_eq!(
                api_signature(&f.credentials.secret, &v.method, &v.path, &canonical),
                v.auth_signature,
                "{}",
                v.id
            );
            if let (Some(body), Some(md5)) = (&v.body, v.query.get("body_md5")) {
                assert_eq!(&md5_hex(body.as_bytes()), md5, "{}", v.id);
            }
        }
    }

    #[test]
    fn webhook_vectors_and_md5_constants() {
        let f = fixture();
        for w in &f.webhooks {
            assert_eq!(
                hmac_sha256_hex(f.credentials.secret.as_bytes(), w.body.as_bytes()),
                w.x_pusher_signature,
                "{}",
                w.id
            );
        }
        for (input, md5) in &f.md5 {
            assert_eq!(&md5_hex(input.as_bytes()), md5);
        }
    }

    #[test]
    fn signed_query_reproduces_h1() {
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let q = signed_query(
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            "POST",
            "/apps/3/events",
            1353088179,
            Some(body),
            &[],
        );
        assert!(q.contains("body_md5=ec365a775a4cd0599faeb73354201b6f"));
        assert!(q.ends_with(
            "auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        ));
    }
}
