//! Listeners: serve a router on a unix socket, on TCP, or on TCP with TLS.
//! Each connection's [`Peer`] is put into its requests' extensions so the
//! router's auth layer can tell a local caller from a remote one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Notify;
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

/// How long a connection may take over a request's head, and how long it
/// may sit with no request in flight. A connection past either is closed,
/// so no client holds a connection (and its task) open for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnTimeouts {
    /// From the first byte of a request until its head is complete.
    pub header: Duration,
    /// From the end of the last response (or the connection's start) until
    /// the next request's first byte.
    pub idle: Duration,
}

impl Default for ConnTimeouts {
    fn default() -> Self {
        Self {
            header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        }
    }
}

/// What a connection is doing, as its reader and its requests tell it.
struct Activity {
    state: Mutex<ActivityState>,
    changed: Notify,
}

struct ActivityState {
    /// Requests whose responses are not yet fully written.
    in_flight: usize,
    /// When the first byte of the next request's head arrived.
    head_started: Option<Instant>,
    /// When the connection last had nothing in flight.
    idle_since: Instant,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                head_started: None,
                idle_since: Instant::now(),
            }),
            changed: Notify::new(),
        })
    }

    fn update(&self, f: impl FnOnce(&mut ActivityState)) {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
        // A stored permit: the watchdog sees the change even if it is not
        // waiting yet.
        self.changed.notify_one();
    }

    fn bytes_read(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.in_flight == 0 && s.head_started.is_none() {
            s.head_started = Some(Instant::now());
            drop(s);
            self.changed.notify_one();
        }
    }

    /// A request's head is complete; the guard ends it when its response
    /// body is done (or dropped).
    fn begin(self: &Arc<Self>) -> InFlight {
        self.update(|s| {
            s.in_flight += 1;
            s.head_started = None;
        });
        InFlight(self.clone())
    }

    /// Resolves, with the reason, once a timeout closes the connection.
    async fn watchdog(&self, t: ConnTimeouts) -> &'static str {
        loop {
            let deadline = {
                let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if s.in_flight > 0 {
                    None
                } else if let Some(h) = s.head_started {
                    Some((h + t.header, "header"))
                } else {
                    Some((s.idle_since + t.idle, "idle"))
                }
            };
            match deadline {
                None => self.changed.notified().await,
                Some((at, why)) => {
                    tokio::select! {
                        () = self.changed.notified() => {}
                        () = tokio::time::sleep_until(at.into()) => return why,
                    }
                }
            }
        }
    }
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.update(|s| {
            s.in_flight -= 1;
            if s.in_flight == 0 {
                s.idle_since = Instant::now();
            }
        });
    }
}

/// A response body that holds its request's [`InFlight`] until it is done:
/// a stream (Server-Sent Events) keeps its connection busy, not idle.
struct TrackedBody {
    inner: axum::body::Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's stream, telling [`Activity`] when bytes arrive.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serve one connection with HTTP/1.1 until the client closes it or a
/// timeout does.
fn spawn_conn<S>(router: Router, io: S, peer: Peer, timeouts: ConnTimeouts)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let activity = Activity::new();
        let io = Watched {
            inner: io,
            activity: activity.clone(),
        };
        let tracker = activity.clone();
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            let in_flight = tracker.begin();
            req.extensions_mut().insert(peer.clone());
            let router = router.clone();
            async move {
                let resp = router.oneshot(req).await.into_response_infallible();
                Ok::<_, Infallible>(resp.map(|inner| TrackedBody {
                    inner,
                    _in_flight: in_flight,
                }))
            }
        });
        let conn =
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc);
        tokio::select! {
            r = conn => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            why = activity.watchdog(timeouts) => {
                // Dropping the connection closes it.
                tracing::debug!(timeout = why, "closing a connection past its timeout");
            }
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
pub async fn serve_unix(listener: UnixListener, router: Router, timeouts: ConnTimeouts) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => spawn_conn(router.clone(), stream, Peer::Unix, timeouts),
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
    timeouts: ConnTimeouts,
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
            None => spawn_conn(router.clone(), stream, peer, timeouts),
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let router = router.clone();
                tokio::spawn(async move {
                    // A handshake is part of the first request's head.
                    match tokio::time::timeout(timeouts.header, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => spawn_conn(router, tls_stream, peer, timeouts),
                        Ok(Err(e)) => tracing::debug!(error = %e, %addr, "tls handshake failed"),
                        Err(_) => tracing::debug!(%addr, "tls handshake timed out"),
                    }
                });
            }
        }
    }
}
