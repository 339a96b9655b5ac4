//! The CLI's HTTP client for the REST API: HTTP/1.1 over the unix socket, TCP,
//! or TCP with TLS. One request per connection; the CLI makes one or two.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use ballast_server::api::ErrorReply;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};

#[derive(Debug, Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp { host: String, port: u16, tls: bool },
}

impl Endpoint {
    /// Parse `--host`: `http://H:P`, `https://H:P` or `unix:///path`.
    pub fn parse_host(url: &str) -> anyhow::Result<Endpoint> {
        if let Some(path) = url.strip_prefix("unix://") {
            return Ok(Endpoint::Unix(path.into()));
        }
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            bail!("--host {url:?}: use http://HOST:PORT, https://HOST:PORT or unix:///PATH");
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("--host {url:?}: a port is required"))?;
        let port = port
            .parse()
            .map_err(|_| anyhow!("--host {url:?}: bad port"))?;
        Ok(Endpoint::Tcp {
            host: host.trim_matches(['[', ']']).to_string(),
            port,
            tls,
        })
    }
}

pub struct Client {
    endpoint: Endpoint,
    token: Option<String>,
    ca_cert: Option<PathBuf>,
    rt: tokio::runtime::Runtime,
}

/// The server's reply to a failed call.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiFailure {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Client {
    pub fn new(
        endpoint: Endpoint,
        token: Option<String>,
        ca_cert: Option<PathBuf>,
    ) -> anyhow::Result<Client> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Client {
            endpoint,
            token,
            ca_cert,
            rt,
        })
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(Method::GET, path, None)
    }

    pub fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<T> {
        self.call(Method::POST, path, Some(body))
    }

    pub fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<T> {
        let body = body.map(|v| v.to_string().into_bytes());
        let (status, bytes) =
            self.rt
                .block_on(self.send(method, path, body, "application/json"))?;
        if !status.is_success() {
            let (code, message) = match serde_json::from_slice::<ErrorReply>(&bytes) {
                Ok(r) => (r.error.code, r.error.message),
                Err(_) => (
                    "http".into(),
                    format!("{status}: {}", String::from_utf8_lossy(&bytes).trim()),
                ),
            };
            return Err(ApiFailure {
                status,
                code,
                message,
            }
            .into());
        }
        let bytes = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(bytes).context("the daemon's reply does not parse")
    }

    async fn connect(&self) -> anyhow::Result<Box<dyn Io>> {
        match &self.endpoint {
            Endpoint::Unix(path) => {
                let s = tokio::net::UnixStream::connect(path)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot reach the ballast daemon at {} (is `ballast serve` running?)",
                            path.display()
                        )
                    })?;
                Ok(Box::new(s))
            }
            Endpoint::Tcp { host, port, tls } => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .with_context(|| format!("cannot reach the ballast daemon at {host}:{port}"))?;
                if !tls {
                    return Ok(Box::new(s));
                }
                let connector = self.tls_connector()?;
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| anyhow!("tls server name {host:?}: {e}"))?;
                let s = connector
                    .connect(name, s)
                    .await
                    .context("tls handshake with the daemon")?;
                Ok(Box::new(s))
            }
        }
    }

    fn tls_connector(&self) -> anyhow::Result<tokio_rustls::TlsConnector> {
        let ca = self.ca_cert.as_ref().ok_or_else(|| {
            anyhow!("https needs --ca-cert FILE (the CA or self-signed certificate to trust)")
        })?;
        let data = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut data.as_slice()) {
            roots
                .add(cert.with_context(|| format!("parsing {}", ca.display()))?)
                .with_context(|| format!("adding {}", ca.display()))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }

    /// GET a streaming response and hand each line of its body to
    /// `on_line` as it arrives, until the stream ends or `on_line` says stop.
    pub fn stream_lines(
        &self,
        path: &str,
        mut on_line: impl FnMut(&str) -> bool,
    ) -> anyhow::Result<()> {
        self.rt.block_on(async {
            let io = self.connect().await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .context("talking to the daemon")?;
            let conn = tokio::spawn(conn);
            let mut req = Request::builder()
                .method(Method::GET)
                .uri(path)
                .header(hyper::header::HOST, "localhost")
                .header(hyper::header::ACCEPT, "text/event-stream");
            if let Some(t) = &self.token {
                req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
            }
            let resp = sender
                .send_request(req.body(Full::new(Bytes::new()))?)
                .await
                .context("talking to the daemon")?;
            let status = resp.status();
            let mut body = resp.into_body();
            if !status.is_success() {
                let bytes = body.collect().await?.to_bytes();
                anyhow::bail!("{status}: {}", String::from_utf8_lossy(&bytes).trim());
            }
            let mut buf = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.context("reading the event stream")?;
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                buf.extend_from_slice(data);
                while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    let line = String::from_utf8_lossy(&line);
                    if !on_line(line.trim_end_matches(['\r', '\n'])) {
                        conn.abort();
                        return Ok(());
                    }
                }
            }
            conn.abort();
            Ok(())
        })
    }

    /// One request with a raw body and content type; (status, body).
    pub fn raw(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        self.rt
            .block_on(self.send(method, path, Some(body), content_type))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let io = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .context("talking to the daemon")?;
        let conn = tokio::spawn(conn);
        let host = match &self.endpoint {
            Endpoint::Unix(_) => "localhost".to_string(),
            // An IPv6 address goes in brackets, as in a URL.
            Endpoint::Tcp { host, port, .. } if host.contains(':') => format!("[{host}]:{port}"),
            Endpoint::Tcp { host, port, .. } => format!("{host}:{port}"),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, host);
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                req = req
                    .header(hyper::header::CONTENT_TYPE, content_type)
                    .header(hyper::header::ACCEPT, content_type);
                Bytes::from(v)
            }
            None => Bytes::new(),
        };
        let resp = sender
            .send_request(req.body(Full::new(body))?)
            .await
            .context("talking to the daemon")?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .context("reading the daemon's reply")?
            .to_bytes();
        conn.abort();
        Ok((status, bytes))
    }
}
