//! TLS for the API (rustls with the ring provider): an operator-provided certificate and key
//! (PEM files), or a self-signed certificate made on the first start in `<data_dir>/tls/`
//! (`cert.pem`, and `key.pem` readable by the owner only) for `localhost`, `127.0.0.1`, `::1`
//! and the configured names. Clients pin it like LND's `tls.cert`: `curl --cacert cert.pem`.
//!
//! The certificate files are read again on every reload, so a renewed certificate is served to
//! new connections without a restart; connections already open keep theirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::config::NodeConfig;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The certificate could not be made.
    #[error("generating the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate and key.
    #[error("certificate and key: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Where the certificate and key of `config` are.
pub fn paths(config: &NodeConfig) -> (PathBuf, PathBuf) {
    let dir = config.data_dir.join("tls");
    (
        config.tls.cert_file.clone().unwrap_or_else(|| dir.join("cert.pem")),
        config.tls.key_file.clone().unwrap_or_else(|| dir.join("key.pem")),
    )
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes the self-signed certificate and key when TLS is on, no files are configured and
/// none exist yet. Returns whether it made them.
pub fn ensure_self_signed(config: &NodeConfig) -> Result<bool, TlsError> {
    if !config.tls.enabled || config.tls.cert_file.is_some() {
        return Ok(false);
    }
    let (cert_path, key_path) = paths(config);
    if cert_path.exists() && key_path.exists() {
        return Ok(false);
    }
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    names.extend(config.tls.names.iter().cloned());
    let certified = rcgen::generate_simple_self_signed(names)?;
    if let Some(dir) = cert_path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    crate::auth::write_private(&key_path, certified.signing_key.serialize_pem().as_bytes()).map_err(io(&key_path))?;
    std::fs::write(&cert_path, certified.cert.pem()).map_err(io(&cert_path))?;
    Ok(true)
}

/// The rustls server configuration from the certificate chain and key files of `config`
/// (HTTP/1.1 only, as the API serves).
pub fn server_config(config: &NodeConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let (cert_path, key_path) = paths(config);
    let chain = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| TlsError::Pem {
            path: cert_path.clone(),
            message: e.to_string(),
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert_path.clone(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: cert_path,
            message: "no certificate".to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| TlsError::Pem {
        path: key_path.clone(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

/// The SHA-256 fingerprint of the first certificate in the chain, `AB:CD:…`, for people to
/// compare.
pub fn fingerprint(config: &NodeConfig) -> Result<String, TlsError> {
    let (cert_path, _) = paths(config);
    let first = CertificateDer::from_pem_file(&cert_path).map_err(|e| TlsError::Pem {
        path: cert_path,
        message: e.to_string(),
    })?;
    let digest = ring::digest::digest(&ring::digest::SHA256, first.as_ref());
    Ok(digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}
