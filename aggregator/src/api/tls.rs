//! HTTPS for the API: a listener that does the TLS handshake of each accepted
//! connection on its own task (a slow or silent client cannot hold up the others) and
//! hands finished connections to the HTTP server.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Longest a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes finished and not yet taken by the server.
const READY: usize = 256;

/// The server TLS configuration from PEM files (no client certificates asked).
///
/// # Errors
/// [`heimdall_common::tls::Error`] when a file is missing or invalid.
pub fn server_config(
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ServerConfig>, heimdall_common::tls::Error> {
    let certs = heimdall_common::tls::load_certs(cert)?;
    let key = heimdall_common::tls::load_key(key)?;
    let mut cfg =
        rustls::ServerConfig::builder_with_provider(heimdall_common::tls::crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A listener of TLS connections.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` and shakes hands with `cfg`.
    pub fn new(tcp: TcpListener, cfg: Arc<rustls::ServerConfig>) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(READY);
        let acceptor = TlsAcceptor::from(cfg);
        tokio::spawn(async move {
            loop {
                let (sock, peer) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "HTTPS accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, ready) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                        Ok(Ok(s)) => {
                            let _ = ready.send((s, peer)).await;
                        }
                        Ok(Err(e)) => {
                            metrics::counter!("heimdall_aggregator_api_tls_failures_total")
                                .increment(1);
                            tracing::debug!(%peer, error = %e, "HTTPS handshake failed");
                        }
                        Err(_) => {
                            metrics::counter!("heimdall_aggregator_api_tls_failures_total")
                                .increment(1);
                            tracing::debug!(%peer, "HTTPS handshake timed out");
                        }
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept task only ends when the server is gone; wait forever.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_api_answers_over_https_and_ignores_plain_clients() {
        let dir = tempfile::tempdir().unwrap();
        let out = heimdall_common::certs::init(dir.path(), &["localhost".to_owned()], "a").unwrap();
        let cfg = server_config(&out.server_cert, &out.server_key).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = TlsListener::new(tcp, cfg).unwrap();
        let addr = axum::serve::Listener::local_addr(&listener).unwrap();
        let app = axum::Router::new().route("/ready", axum::routing::get(|| async { "ready\n" }));
        tokio::spawn(async move { axum::serve(listener, app).await });

        // A client that sends plain HTTP gets no answer, and does not block others.
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();

        let roots = heimdall_common::tls::root_store(&out.ca).unwrap();
        let client =
            rustls::ClientConfig::builder_with_provider(heimdall_common::tls::crypto_provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let sock = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, sock).await.unwrap();
        tls.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        tls.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.ends_with("ready\n"), "{resp}");
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_millis(200), plain.read(&mut buf)).await;
        assert!(
            !matches!(n, Ok(Ok(k)) if k > 0 && buf.starts_with(b"HTTP")),
            "plain HTTP is not answered"
        );
    }
}
