//! The files the configuration names (TLS certificate and key, the Redis and webhook CAs) are
//! readable when the configuration is loaded, so `check-config` reports a missing one as an
//! error instead of the server failing later. Whether their contents parse is checked where
//! they are used (the listener, the Redis endpoint, the webhook transport).

use std::path::Path;

use super::{ConfigError, FileConfig};

/// Every file path of `file`, with the key that names it.
fn named_files(file: &FileConfig) -> Vec<(&'static str, &Path)> {
    let mut out = Vec::new();
    if let Some(tls) = &file.server.tls {
        out.push(("server.tls.cert", tls.cert.as_path()));
        out.push(("server.tls.key", tls.key.as_path()));
    }
    if let Some(ca) = &file.scaling.tls_ca_file {
        out.push(("scaling.tls_ca_file", ca.as_path()));
    }
    if let Some(ca) = &file.webhooks.ca_file {
        out.push(("webhooks.ca_file", ca.as_path()));
    }
    out
}

/// An error naming the first file that cannot be opened for reading.
pub(super) fn check_readable(file: &FileConfig) -> Result<(), ConfigError> {
    for (key, path) in named_files(file) {
        if let Err(e) = std::fs::File::open(path) {
            return Err(ConfigError::Invalid(format!(
                "{key} {}: cannot read: {e}",
                path.display()
            )));
        }
    }
    Ok(())
}
