//! `resound probe`: one HTTP GET of `/up` (or `/ready`) on this node's own port, for container
//! health checks that should not need curl in the image. It follows the configuration the
//! server would use (port, TLS in the binary), talks only to a loopback address, and sends
//! nothing secret. It is not part of the server: it runs in its own short-lived process.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

use resound::config::ServerConfig;

/// The address a probe connects to: the configured host, or loopback when the server listens
/// on every address.
pub fn target(server: &ServerConfig) -> anyhow::Result<SocketAddr> {
    let ip = match server.host.as_str() {
        "" | "0.0.0.0" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        "::" | "[::]" => IpAddr::V6(Ipv6Addr::LOCALHOST),
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        h => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .with_context(|| format!("server.host {h:?} is not an IP address"))?,
    };
    Ok(SocketAddr::new(ip, server.port))
}

/// GETs `path` on `addr` (over TLS when `tls`) and succeeds on a 2xx answer within `timeout`.
pub async fn run(addr: SocketAddr, tls: bool, path: &str, timeout: Duration) -> anyhow::Result<()> {
    let status = tokio::time::timeout(timeout, get(addr, tls, path))
        .await
        .map_err(|_| anyhow!("no answer from {addr} within {timeout:?}"))??;
    if !status.is_success() {
        bail!("GET {path} on {addr} answered {status}");
    }
    Ok(())
}

async fn get(addr: SocketAddr, tls: bool, path: &str) -> anyhow::Result<http::StatusCode> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let request = Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "resound-probe")
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    if tls {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(loopback_tls()?));
        let name = ServerName::IpAddress(addr.ip().into());
        let stream = connector
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS handshake with {addr}"))?;
        send(TokioIo::new(stream), request).await
    } else {
        send(TokioIo::new(tcp), request).await
    }
}

async fn send<T>(io: T, request: Request<Empty<Bytes>>) -> anyhow::Result<http::StatusCode>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .context("HTTP handshake")?;
    let conn = tokio::spawn(conn);
    let response = sender.send_request(request).await.context("GET")?;
    conn.abort();
    Ok(response.status())
}

/// TLS settings for a connection to this host's own listener. Its certificate names the public
/// host, not the loopback address, and may be signed by a private CA, so it is not checked
/// against any root: the probe learns only whether the server answers, and sends nothing that
/// a listener impersonating it could use. Handshake signatures are still verified.
fn loopback_tls() -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyCertificate(provider.clone()));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(config)
}

#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listener_is_probed_on_loopback() {
        let mut s = ServerConfig {
            port: 6001,
            ..ServerConfig::default()
        };
        assert_eq!(target(&s).ok(), "127.0.0.1:6001".parse().ok());
        s.host = "::".into();
        assert_eq!(target(&s).ok(), "[::1]:6001".parse().ok());
        s.host = "127.0.0.2".into();
        assert_eq!(target(&s).ok(), "127.0.0.2:6001".parse().ok());
    }
}
