//! TLS termination with rustls for `wss://` and `https://` on the server port.
//!
//! Handshakes run in their own tasks so that a slow or silent client cannot stall the accept
//! loop; finished streams are handed to the HTTP server through a channel.

use crate::config::TlsConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::{self, pki_types};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A client has this long to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the acceptor from the PEM files named in the config.
pub fn acceptor(cfg: &TlsConfig) -> Result<TlsAcceptor, String> {
    let certs: Vec<pki_types::CertificateDer<'static>> = {
        let pem = std::fs::read(&cfg.cert_file)
            .map_err(|e| format!("cannot read tls.cert_file {}: {e}", cfg.cert_file))?;
        rustls_pemfile::certs(&mut pem.as_slice())
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
        rustls_pemfile::private_key(&mut pem.as_slice())
            .map_err(|e| {
                format!(
                    "tls.key_file {} is not a PEM private key: {e}",
                    cfg.key_file
                )
            })?
            .ok_or_else(|| format!("tls.key_file {} holds no private key", cfg.key_file))?
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls.cert_file and tls.key_file do not form a valid pair: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// An `axum::serve` listener yielding finished TLS streams.
#[derive(Debug)]
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> Self {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, rx) = mpsc::channel(1024);
        let accept_task = tokio::spawn(async move {
            loop {
                let (tcp, addr) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Usually EMFILE: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        Self {
            rx,
            local,
            accept_task,
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task never ends on its own; if it did, wait for shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
