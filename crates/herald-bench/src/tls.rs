//! `--tls`: the client side of `wss://` and `https://`, so the server's TLS cost (handshakes,
//! memory per idle connection) is measured like the rest. The server's certificate is checked
//! against the CA file given with `--tls-ca`: a load generator that skipped verification would
//! measure a cheaper handshake than real clients make.

use crate::net::BenchError;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;

/// A byte stream to the server: as it is, or inside TLS.
#[derive(Debug)]
pub enum Wire<S> {
    Plain(S),
    Tls(Box<tokio_rustls::client::TlsStream<S>>),
}

impl<S> Wire<S> {
    /// The stream under TLS (or the stream itself).
    pub fn inner(&self) -> &S {
        match self {
            Self::Plain(s) => s,
            Self::Tls(t) => t.get_ref().0,
        }
    }

    /// The stream under TLS (or the stream itself), to change its settings.
    pub fn inner_mut(&mut self) -> &mut S {
        match self {
            Self::Plain(s) => s,
            Self::Tls(t) => t.get_mut().0,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Wire<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Wire<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How connections are opened: TLS with a connector trusting the given CA, or plain.
#[derive(Clone, Default)]
pub struct Tls {
    connector: Option<(TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("on", &self.connector.is_some())
            .finish()
    }
}

impl Tls {
    /// TLS to `host` (a name or an IP address the certificate names), trusting the
    /// certificates in the PEM file `ca_file`.
    pub fn new(host: &str, ca_file: &str) -> Result<Self, String> {
        let pem =
            std::fs::read(ca_file).map_err(|e| format!("cannot read --tls-ca {ca_file}: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("--tls-ca {ca_file} is not PEM: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("--tls-ca {ca_file}: a certificate is unusable: {e}"))?;
        }
        if roots.is_empty() {
            return Err(format!("--tls-ca {ca_file} holds no certificate"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup failed: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
            .map_err(|e| format!("--host {host} cannot name a TLS server: {e}"))?
            .to_owned();
        Ok(Self {
            connector: Some((TlsConnector::from(Arc::new(config)), name)),
        })
    }

    pub fn on(&self) -> bool {
        self.connector.is_some()
    }

    /// Wraps a connected stream: the TLS handshake when on.
    pub async fn wrap<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
    ) -> Result<Wire<S>, BenchError> {
        match &self.connector {
            None => Ok(Wire::Plain(stream)),
            Some((c, name)) => c
                .connect(name.clone(), stream)
                .await
                .map(|t| Wire::Tls(Box::new(t)))
                .map_err(|e| BenchError::new("tls_handshake", e)),
        }
    }
}
