//! Turns a configured [`WebhookTarget`] into an [`Endpoint`]: a parsed `http://` or
//! `https://` URI and the custom headers that may be sent with it.
//!
//! Owns the rules for what a target URL may be (absolute, `http://` or `https://`, a host, no
//! user info) and which header names belong to the protocol and can never be replaced by a
//! custom header.

use http::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, TRANSFER_ENCODING,
};
use http::uri::{Scheme, Uri};

use super::config::WebhookTarget;
use super::error::WebhookError;

/// `X-Pusher-Key`, lowercase as `http` stores header names.
pub(crate) const X_PUSHER_KEY: &str = "x-pusher-key";
/// `X-Pusher-Signature`, lowercase as `http` stores header names.
pub(crate) const X_PUSHER_SIGNATURE: &str = "x-pusher-signature";

/// Checks that `url` can be a webhook target: an absolute `http://` or `https://` URL with a
/// host and no user info.
pub fn validate_target_url(url: &str) -> Result<(), WebhookError> {
    parse_target_url(url).map(|_| ())
}

/// `url` as it may be shown to an operator: user info and query, which may carry credentials
/// or tokens, replaced by `***` (`https://u:pw@h/p?t=1` → `https://***@h/p?***`).
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    // The last '@' ends the user info even when the password holds an unencoded '/' or '?'.
    let rest = match rest.rsplit_once('@') {
        Some((_, host_and_path)) => format!("***@{host_and_path}"),
        None => rest.to_owned(),
    };
    match rest.split_once('?') {
        Some((before, _)) => format!("{scheme}{before}?***"),
        None => format!("{scheme}{rest}"),
    }
}

pub(crate) fn parse_target_url(url: &str) -> Result<Uri, WebhookError> {
    let invalid = |reason: &str| WebhookError::InvalidUrl {
        url: redact_url(url),
        reason: reason.to_owned(),
    };
    let uri: Uri = url
        .trim()
        .parse()
        .map_err(|err: http::uri::InvalidUri| invalid(&err.to_string()))?;
    match uri.scheme() {
        Some(scheme) if *scheme == Scheme::HTTP || *scheme == Scheme::HTTPS => {}
        Some(_) => return Err(invalid("only http:// and https:// URLs are supported")),
        None => return Err(invalid("must be an absolute http:// or https:// URL")),
    }
    let Some(authority) = uri.authority() else {
        return Err(invalid("must name a host"));
    };
    if authority.host().is_empty() {
        return Err(invalid("must name a host"));
    }
    if authority.as_str().contains('@') {
        return Err(invalid(
            "user info in the URL is not supported; use a custom header",
        ));
    }
    Ok(uri)
}

/// Whether `name` (any case) is a header the protocol or the HTTP framing owns.
fn is_reserved(name: &HeaderName) -> bool {
    [
        CONTENT_TYPE,
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        HOST,
        CONNECTION,
    ]
    .contains(name)
        || name.as_str() == X_PUSHER_KEY
        || name.as_str() == X_PUSHER_SIGNATURE
}

/// Parses one custom header, refusing invalid names/values and reserved names.
pub(crate) fn custom_header(
    name: &str,
    value: &str,
) -> Result<(HeaderName, HeaderValue), WebhookError> {
    let rejected = |reason| WebhookError::InvalidHeader {
        name: name.to_owned(),
        reason,
    };
    let header_name =
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| rejected("invalid header name"))?;
    if is_reserved(&header_name) {
        return Err(rejected(
            "this header is set by the webhook sender and cannot be overridden",
        ));
    }
    let header_value =
        HeaderValue::from_str(value).map_err(|_| rejected("invalid header value"))?;
    Ok((header_name, header_value))
}

/// A target ready to receive requests.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) uri: Uri,
    /// Custom headers that passed [`custom_header`], in configured order.
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    /// `host:port` only: URLs may carry tokens in their path or query, so logs name the host.
    pub(crate) host: String,
}

impl Endpoint {
    /// Prepares `target`. A bad URL is an error (the target cannot be used); a bad custom
    /// header is skipped and reported in the returned list so the caller can log it once.
    pub(crate) fn prepare(
        target: &WebhookTarget,
    ) -> Result<(Endpoint, Vec<WebhookError>), WebhookError> {
        let uri = parse_target_url(&target.url)?;
        let host = uri
            .authority()
            .map(|authority| authority.as_str().to_owned())
            .unwrap_or_default();
        let mut headers = Vec::with_capacity(target.headers.len());
        let mut skipped = Vec::new();
        for (name, value) in &target.headers {
            match custom_header(name, value) {
                Ok(header) => headers.push(header),
                Err(err) => skipped.push(err),
            }
        }
        Ok((Endpoint { uri, headers, host }, skipped))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn accepts_http_and_https_urls() {
        for url in [
            "http://127.0.0.1:8080/webhooks",
            "http://example.test/hooks?token=abc",
            "http://localhost",
            "HTTP://EXAMPLE.TEST/x",
            "https://example.test/hooks",
            "https://127.0.0.1:8443/hooks?token=abc",
        ] {
            assert!(validate_target_url(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn refuses_other_shapes() {
        for url in [
            "",
            "/relative/path",
            "example.test/hooks",
            "ftp://example.test/",
            "http://user:pw@example.test/",
            "http:///nohost",
            "not a url",
        ] {
            assert!(
                matches!(
                    validate_target_url(url),
                    Err(WebhookError::InvalidUrl { .. })
                ),
                "{url}"
            );
        }
    }

    #[test]
    fn reserved_headers_cannot_be_overridden() {
        for name in [
            "Content-Type",
            "x-pusher-key",
            "X-Pusher-Signature",
            "content-length",
            "Host",
            "Transfer-Encoding",
            "Connection",
        ] {
            assert!(
                matches!(
                    custom_header(name, "x"),
                    Err(WebhookError::InvalidHeader { .. })
                ),
                "{name}"
            );
        }
        assert!(custom_header("X-Custom", "1").is_ok());
        assert!(custom_header("bad header", "1").is_err());
        assert!(custom_header("X-Custom", "line\nbreak").is_err());
    }

    #[test]
    fn prepare_skips_bad_headers_and_keeps_good_ones() {
        let target = WebhookTarget {
            headers: vec![
                ("X-Custom".into(), "1".into()),
                ("X-Pusher-Key".into(), "forged".into()),
            ],
            ..WebhookTarget::new("http://127.0.0.1:9/hook?token=secret")
        };
        let prepared = Endpoint::prepare(&target);
        let Ok((endpoint, skipped)) = prepared else {
            panic!("a valid URL must prepare");
        };
        assert_eq!(endpoint.headers.len(), 1);
        assert_eq!(skipped.len(), 1);
        assert_eq!(endpoint.host, "127.0.0.1:9");
        assert!(target.validate().is_err());
    }
}
