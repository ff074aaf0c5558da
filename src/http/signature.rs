//! The signed-request check of protocol.md 5.2.3: the one verifier every HTTP API endpoint uses.

use std::collections::BTreeMap;

use percent_encoding::percent_decode_str;

use super::error::ApiError;
use crate::app::App;
use crate::protocol::auth::{api_signature, canonical_query, hex_eq, md5_hex};

/// The decoded query of a request. Repeated keys (`channels[]=a&channels[]=b`) are joined with
/// `,` under the key without `[]`.
#[derive(Debug, Default, Clone)]
pub struct Query(pub BTreeMap<String, String>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        let mut map: BTreeMap<String, String> = BTreeMap::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = decode(k);
            let v = decode(v);
            let k = k.strip_suffix("[]").map(str::to_string).unwrap_or(k);
            map.entry(k)
                .and_modify(|existing| {
                    existing.push(',');
                    existing.push_str(&v);
                })
                .or_insert(v);
        }
        Query(map)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_decode_str(&s).decode_utf8_lossy().into_owned()
}

/// Verifies a request against `app`: `verify_query`, then `verify_body`.
#[cfg(test)]
pub fn verify(
    app: &App,
    method: &str,
    paths: &[&str],
    query: &Query,
    body: &[u8],
    now: u64,
) -> Result<(), ApiError> {
    verify_query(app, method, paths, query, now)?;
    verify_body(query, body)
}

/// Verifies everything a request's query proves: the key, the timestamp window and the
/// signature, which covers `body_md5`. It needs no body, so an unauthenticated caller is
/// refused before its body is read. `paths` are the candidate signed paths (raw, and with the
/// route prefix stripped). `now` is Unix seconds.
pub fn verify_query(
    app: &App,
    method: &str,
    paths: &[&str],
    query: &Query,
    now: u64,
) -> Result<(), ApiError> {
    let q = &query.0;
    let (Some(key), Some(ts), Some(sig)) = (
        q.get("auth_key"),
        q.get("auth_timestamp"),
        q.get("auth_signature"),
    ) else {
        return Err(ApiError::Unauthorized(
            "Missing auth_key, auth_timestamp or auth_signature".into(),
        ));
    };
    if key != app.key.as_str() {
        return Err(ApiError::Unauthorized(format!(
            "Invalid auth_key: {key} does not belong to app {}",
            app.id
        )));
    }
    if let Some(v) = q.get("auth_version") {
        if v != "1.0" {
            return Err(ApiError::Unauthorized(format!(
                "Unsupported auth_version {v}"
            )));
        }
    }
    let ts: i64 = ts
        .parse()
        .map_err(|_| ApiError::Unauthorized("auth_timestamp is not a number".into()))?;
    let tolerance = app.settings.auth_timestamp_tolerance.as_secs();
    // In i128 every difference of an i64 and a u64 is exact: no overflow at the extremes.
    if i128::from(now).abs_diff(i128::from(ts)) > u128::from(tolerance) {
        return Err(ApiError::Unauthorized(format!(
            "Timestamp expired: Given timestamp ({ts}) not within {tolerance}s of server time ({now})"
        )));
    }
    let canonical = canonical_query(
        q.iter()
            .filter(|(k, _)| k.as_str() != "auth_signature")
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    for secret in app.secrets_at(std::time::SystemTime::now()) {
        for path in paths {
            let expected = api_signature(secret, method, path, &canonical);
            if hex_eq(&expected, sig) {
                return Ok(());
            }
        }
    }
    Err(ApiError::Unauthorized(format!(
        "Invalid signature: you should have sent HmacSHA256Hex({:?}, your_secret_key)",
        format!(
            "{}\n{}\n{}",
            method,
            paths.first().copied().unwrap_or(""),
            canonical
        )
    )))
}

/// Checks the body against the signed `body_md5` (an absent `body_md5` means an empty body).
/// Call after `verify_query`, which proved `body_md5` itself.
pub fn verify_body(query: &Query, body: &[u8]) -> Result<(), ApiError> {
    let body_ok = match query.get("body_md5") {
        Some(given) => hex_eq(&md5_hex(body), given),
        None => body.is_empty(),
    };
    if body_ok {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(
            "body_md5 is missing or does not match the body".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{AppId, AppKey, AppSecret, AppSettings};
    use std::sync::Arc;

    fn app() -> App {
        App {
            id: AppId(Arc::from("3")),
            key: AppKey(Arc::from("278d425bdf160c739803")),
            secret: AppSecret(Arc::from("7ad3773142a6692b25b8")),
            settings: AppSettings::default(),
            webhooks: None,
            streams: None,
        }
    }

    const TS: u64 = 1353088179;

    fn q(s: &str) -> Query {
        Query::parse(Some(s))
    }

    const H1_BODY: &str = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
    const H1_Q: &str = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f&auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";

    #[test]
    fn h1_accepted_within_600s_and_refused_at_601() {
        let a = app();
        let ok = |now| {
            verify(
                &a,
                "POST",
                &["/apps/3/events"],
                &q(H1_Q),
                H1_BODY.as_bytes(),
                now,
            )
        };
        assert_eq!(ok(TS), Ok(()));
        assert_eq!(ok(TS + 600), Ok(()));
        assert_eq!(ok(TS - 600), Ok(()));
        assert!(ok(TS + 601).is_err(), "N5");
        assert!(ok(TS - 601).is_err(), "N5");
    }

    /// The query of H1 with another `auth_timestamp`, signed correctly.
    fn h1_at(ts: &str) -> Query {
        let mut query = q(H1_Q);
        query.0.insert("auth_timestamp".into(), ts.into());
        query.0.remove("auth_signature");
        let canonical = canonical_query(query.0.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let sig = api_signature("7ad3773142a6692b25b8", "POST", "/apps/3/events", &canonical);
        query.0.insert("auth_signature".into(), sig);
        query
    }

    #[test]
    fn timestamps_at_the_extremes_are_refused_without_overflow() {
        let a = app();
        let check = |ts: String, now: u64| {
            verify(
                &a,
                "POST",
                &["/apps/3/events"],
                &h1_at(&ts),
                H1_BODY.as_bytes(),
                now,
            )
        };
        let two_63 = 1i128 << 63;
        let now = i128::from(TS);
        let cases = [
            i64::MIN.to_string(),
            i64::MAX.to_string(),
            u64::MAX.to_string(),
            (now - two_63).to_string(),
            (now + two_63).to_string(),
            (now - two_63 + 1).to_string(),
        ];
        for ts in cases {
            for now in [TS, 0, u64::MAX] {
                assert!(
                    matches!(check(ts.clone(), now), Err(ApiError::Unauthorized(_))),
                    "auth_timestamp {ts} at {now} must be refused"
                );
            }
        }
        // The signing itself is right: the same query with a current timestamp passes.
        assert_eq!(check(TS.to_string(), TS), Ok(()));
    }

    #[test]
    fn n4_a_changed_body_is_refused() {
        let body = format!("{H1_BODY} ");
        let r = verify(
            &app(),
            "POST",
            &["/apps/3/events"],
            &q(H1_Q),
            body.as_bytes(),
            TS,
        );
        assert!(matches!(r, Err(ApiError::Unauthorized(_))));
    }

    #[test]
    fn h8_python_get_with_body_md5_is_accepted() {
        // N6: a server dropping body_md5 on GET would refuse this.
        let query = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=d41d8cd98f00b204e9800998ecf8427e&filter_by_prefix=presence-&info=user_count&auth_signature=f3f17c61ae491cc9085db68b22076e9b772e3bcb301659d655153ee3f9782aba";
        assert_eq!(
            verify(&app(), "GET", &["/apps/3/channels"], &q(query), b"", TS),
            Ok(())
        );
    }

    #[test]
    fn h3_encoded_comma_is_signed_decoded() {
        // N7: PHP sends %2C; the signature covers the decoded value.
        let query = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&info=user_count%2Csubscription_count&auth_signature=377ee9260ea002a70c0d40cd887d55cb36db9f7f821297f5efacbcce66be356d";
        assert_eq!(
            verify(
                &app(),
                "GET",
                &["/apps/3/channels/presence-foobar"],
                &q(query),
                b"",
                TS
            ),
            Ok(())
        );
    }

    #[test]
    fn prefixed_paths_verify_against_the_stripped_path() {
        let r = verify(
            &app(),
            "POST",
            &["/reverb/apps/3/events", "/apps/3/events"],
            &q(H1_Q),
            H1_BODY.as_bytes(),
            TS,
        );
        assert_eq!(r, Ok(()));
    }

    #[test]
    fn missing_or_wrong_key_is_401() {
        let r = verify(
            &app(),
            "POST",
            &["/apps/3/events"],
            &q("auth_timestamp=1"),
            b"",
            TS,
        );
        assert!(matches!(r, Err(ApiError::Unauthorized(_))));
        let wrong = H1_Q.replace("278d425bdf160c739803", "otherkey");
        let r = verify(
            &app(),
            "POST",
            &["/apps/3/events"],
            &q(&wrong),
            H1_BODY.as_bytes(),
            TS,
        );
        assert!(matches!(r, Err(ApiError::Unauthorized(_))));
    }

    #[test]
    fn repeated_keys_are_joined() {
        let query = q("channels[]=a&channels[]=b&x=1+2");
        assert_eq!(query.get("channels"), Some("a,b"));
        assert_eq!(query.get("x"), Some("1 2"));
    }
}
