//! TLS termination with rustls for `wss://` and `https://` on the server port.
//!
//! Handshakes run in the connection's own task (see `listener`), so a slow or silent client
//! cannot stall the accept loop.

use crate::config::TlsConfig;
use rustls_pki_types::pem::PemObject;
use std::sync::Arc;
use tokio_rustls::rustls::{self, pki_types};

/// What the server port accepts TLS connections with (see `lean_tls`).
pub type Acceptor = Arc<rustls::ServerConfig>;

/// Builds the acceptor from the PEM files named in the config.
pub fn acceptor(cfg: &TlsConfig) -> Result<Acceptor, String> {
    let certs: Vec<pki_types::CertificateDer<'static>> = {
        let pem = std::fs::read(&cfg.cert_file)
            .map_err(|e| format!("cannot read tls.cert_file {}: {e}", cfg.cert_file))?;
        pki_types::CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| {
                format!(
                    "tls.cert_file {} is not a PEM certificate chain: {e}",
                    cfg.cert_file
                )
            })?
    };
    if certs.is_empty() {
        return Err(format!(
            "tls.cert_file {} holds no certificate",
            cfg.cert_file
        ));
    }
    let key = {
        let pem = std::fs::read(&cfg.key_file)
            .map_err(|e| format!("cannot read tls.key_file {}: {e}", cfg.key_file))?;
        pki_types::PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
            pki_types::pem::Error::NoItemsFound => {
                format!("tls.key_file {} holds no private key", cfg.key_file)
            }
            e => format!(
                "tls.key_file {} is not a PEM private key: {e}",
                cfg.key_file
            ),
        })?
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls.cert_file and tls.key_file do not form a valid pair: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
