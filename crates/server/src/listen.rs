//! Listeners: serve a router on a unix socket, on TCP, or on TCP with TLS.
//! Each connection's [`Peer`] is put into its requests' extensions so the
//! router's auth layer can tell a local caller from a remote one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tower::ServiceExt;

use crate::rest::Peer;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{path}: {detail}")]
    Socket { path: PathBuf, detail: String },
    #[error("listen on {addr}: {detail}")]
    Tcp { addr: String, detail: String },
    #[error("tls: {0}")]
    Tls(String),
}

/// Bind a unix socket with the given mode, replacing a stale socket file.
/// A live socket (another daemon answering) is an error.
pub async fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, ListenError> {
    let err = |detail: String| ListenError::Socket {
        path: path.to_path_buf(),
        detail,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(err("another process is serving on this socket".into()));
        }
        std::fs::remove_file(path).map_err(|e| err(format!("removing stale socket: {e}")))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| err(e.to_string()))?;
    Ok(listener)
}

pub async fn bind_tcp(addr: &str) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr).await.map_err(|e| ListenError::Tcp {
        addr: addr.to_string(),
        detail: e.to_string(),
    })
}

/// Load a PEM certificate chain and key into a TLS acceptor.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, ListenError> {
    let certs = {
        let data = std::fs::read(cert)
            .map_err(|e| ListenError::Tls(format!("{}: {e}", cert.display())))?;
        rustls_pemfile::certs(&mut data.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ListenError::Tls(format!("{}: {e}", cert.display())))?
    };
    if certs.is_empty() {
        return Err(ListenError::Tls(format!(
            "{}: no certificate found",
            cert.display()
        )));
    }
    let key = {
        let data =
            std::fs::read(key).map_err(|e| ListenError::Tls(format!("{}: {e}", key.display())))?;
        rustls_pemfile::private_key(&mut data.as_slice())
            .map_err(|e| ListenError::Tls(format!("{}: {e}", key.display())))?
            .ok_or_else(|| ListenError::Tls(format!("{}: no private key found", key.display())))?
    };
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ListenError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| ListenError::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serve one connection with HTTP/1.1.
fn spawn_conn<S>(router: Router, io: S, peer: Peer)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(peer.clone());
            let router = router.clone();
            async move { Ok::<_, Infallible>(router.oneshot(req).await.into_response_infallible()) }
        });
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), svc)
            .await
        {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    });
}

trait IntoResponseInfallible {
    fn into_response_infallible(self) -> axum::response::Response;
}

impl IntoResponseInfallible for Result<axum::response::Response, Infallible> {
    fn into_response_infallible(self) -> axum::response::Response {
        match self {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }
}

/// Accept on a unix socket until the task is dropped.
pub async fn serve_unix(listener: UnixListener, router: Router) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => spawn_conn(router.clone(), stream, Peer::Unix),
            Err(e) => {
                tracing::warn!(error = %e, "accept on unix socket failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accept on TCP (with TLS when an acceptor is given) until dropped.
pub async fn serve_tcp(
    listener: TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let (stream, addr): (_, SocketAddr) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "accept on tcp failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let peer = Peer::Tcp {
            loopback: addr.ip().is_loopback(),
        };
        match &tls {
            None => spawn_conn(router.clone(), stream, peer),
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let router = router.clone();
                tokio::spawn(async move {
                    match acceptor.accept(stream).await {
                        Ok(tls_stream) => spawn_conn(router, tls_stream, peer),
                        Err(e) => tracing::debug!(error = %e, %addr, "tls handshake failed"),
                    }
                });
            }
        }
    }
}
