//! Move streams between nodes (see `ballast_core::moves`).
//!
//! Every node that can receive a move listens on a TCP port with TLS. Its
//! certificate is made at start (rcgen) and its SHA-256 is published in the
//! node's record in the store; a sender accepts only that certificate. The
//! store is the trust root both ways: the sender learns the fingerprint from
//! it, and the receiver accepts a stream only for a move the store shows,
//! carrying that move's random secret. There is no unauthenticated port.
//!
//! A move between two pools of this same node (the target's endpoint is
//! this process's own) skips TCP and TLS: the same frames go over a unix
//! socket pair to a receiving thread in this process. Nothing leaves the
//! process, and the hello is checked against the store all the same.
//!
//! The data path is here too (`image.rs`: sparse chunks with checksums;
//! `subvol.rs`: btrfs send/receive); what the streams mean (which move,
//! where the data goes, when to cut over) is the core's.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ballast_core::moves::{MoveHello, MoveLink, MoveReceiver, MoveTransport, TransferEndpoint};
use ballast_core::DriverError;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

mod image;
mod proto;
mod subvol;

pub use image::{chunk_digests, CHUNK};

/// The name in the certificate (the pin is what is checked, not the name).
const SERVER_NAME: &str = "ballast-transfer";

/// A peer that sends or answers nothing for this long has failed.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Streams received at once; more wait in the accept queue.
const MAX_STREAMS: usize = 16;

type TlsServer = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

/// Either end of a stream: TLS over TCP, or a local socket pair.
trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// The peer named in errors of a stream to this node itself.
const LOCAL_PEER: &str = "this node";

/// This node's side of move streams: the listener and the client.
pub struct Transfer {
    endpoint: TransferEndpoint,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// For streams to this node itself.
    receiver: Weak<dyn MoveReceiver>,
}

impl Transfer {
    /// Listen on `addr` (port 0: any) for streams `receiver` accepts, on a
    /// thread of its own for as long as the receiver lives.
    pub fn listen(addr: &str, receiver: Weak<dyn MoveReceiver>) -> io::Result<Arc<Transfer>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rcgen::KeyPair::generate().map_err(io::Error::other)?;
        let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
            .map_err(io::Error::other)?;
        let cert = params.self_signed(&key).map_err(io::Error::other)?;
        let der = cert.der().to_vec();
        let fingerprint = fingerprint(&der);
        let config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(der)],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .map_err(io::Error::other)?;
        let listener = TcpListener::bind(addr)?;
        let bound = listener.local_addr()?;
        let config = Arc::new(config);
        let local = receiver.clone();
        std::thread::Builder::new()
            .name("transfer-accept".into())
            .spawn(move || accept_loop(listener, config, receiver))?;
        tracing::info!(addr = %bound, "accepting move streams (tls)");
        Ok(Arc::new(Transfer {
            endpoint: TransferEndpoint {
                address: bound.to_string(),
                fingerprint,
            },
            provider,
            receiver: local,
        }))
    }

    pub fn local_addr(&self) -> &str {
        &self.endpoint.address
    }

    /// A stream to this node itself: a socket pair, its far end served by
    /// a thread of this process (the certificate is ours: nothing to pin).
    fn connect_local(&self, hello: &MoveHello) -> Result<Box<dyn MoveLink>, DriverError> {
        let unavailable =
            |e: io::Error| DriverError::Unavailable(format!("a move stream to {LOCAL_PEER}: {e}"));
        let (mut near, far) = UnixStream::pair().map_err(unavailable)?;
        for s in [&near, &far] {
            s.set_read_timeout(Some(IO_TIMEOUT)).map_err(unavailable)?;
            s.set_write_timeout(Some(IO_TIMEOUT)).map_err(unavailable)?;
        }
        let receiver = self.receiver.clone();
        std::thread::Builder::new()
            .name("transfer-recv".into())
            .spawn(move || {
                let mut far = far;
                if let Err(e) = serve_stream(&mut far, &receiver) {
                    tracing::warn!(peer = LOCAL_PEER, error = %e, "a move stream ended with an error");
                }
            })
            .map_err(unavailable)?;
        proto::send_json(&mut near, proto::HELLO, hello).map_err(|e| link_error(LOCAL_PEER, e))?;
        let ready: proto::Ready =
            proto::expect_json(&mut near, proto::READY).map_err(|e| link_error(LOCAL_PEER, e))?;
        Ok(Box::new(Link::new(
            Box::new(near),
            LOCAL_PEER.to_string(),
            ready,
        )))
    }
}

impl MoveTransport for Transfer {
    fn endpoint(&self) -> TransferEndpoint {
        self.endpoint.clone()
    }

    fn connect(
        &self,
        to: &TransferEndpoint,
        hello: &MoveHello,
    ) -> Result<Box<dyn MoveLink>, DriverError> {
        // Our own certificate (made at start, never shared): this node.
        if to.fingerprint == self.endpoint.fingerprint {
            return self.connect_local(hello);
        }
        let unavailable =
            |e: String| DriverError::Unavailable(format!("move stream to {}: {e}", to.address));
        let addr: SocketAddr = to
            .address
            .to_socket_addrs()
            .map_err(|e| unavailable(e.to_string()))?
            .next()
            .ok_or_else(|| unavailable("no address".into()))?;
        let tcp = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|e| unavailable(e.to_string()))?;
        set_timeouts(&tcp).map_err(|e| unavailable(e.to_string()))?;
        let verifier = Arc::new(Pinned {
            fingerprint: to.fingerprint.clone(),
            provider: Arc::clone(&self.provider),
        });
        let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| unavailable(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let conn = rustls::ClientConnection::new(
            Arc::new(config),
            ServerName::try_from(SERVER_NAME).expect("a valid name"),
        )
        .map_err(|e| unavailable(e.to_string()))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        proto::send_json(&mut tls, proto::HELLO, hello).map_err(|e| link_error(&to.address, e))?;
        let ready: proto::Ready =
            proto::expect_json(&mut tls, proto::READY).map_err(|e| link_error(&to.address, e))?;
        Ok(Box::new(Link::new(
            Box::new(tls),
            to.address.clone(),
            ready,
        )))
    }
}

/// Hex SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn set_timeouts(tcp: &TcpStream) -> io::Result<()> {
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    tcp.set_nodelay(true)
}

/// A stream error as the sender reports it: what the target said, or why
/// the stream broke.
fn link_error(peer: &str, e: proto::ProtoError) -> DriverError {
    match e {
        proto::ProtoError::Remote { class, message } => match class.as_str() {
            "corrupt" => DriverError::Corrupt(format!("node at {peer}: {message}")),
            "refused" => DriverError::NotFound(format!("node at {peer}: {message}")),
            "no_space" => DriverError::NoSpace(format!("node at {peer}: {message}")),
            _ => DriverError::Unavailable(format!("node at {peer}: {message}")),
        },
        proto::ProtoError::Io(e) => {
            DriverError::Unavailable(format!("move stream to {peer} broke: {e}"))
        }
        proto::ProtoError::Local(e) => e,
    }
}

/// The sender's end of one stream.
struct Link {
    stream: Box<dyn Stream>,
    peer: String,
    /// Image moves: the digest of each chunk as the target holds it.
    target: Option<Vec<[u8; 32]>>,
    /// Image moves: the digest of each chunk the last pass read.
    sent: Vec<[u8; 32]>,
    passes: u32,
    /// Subvolume moves: the snapshot the last pass sent (the parent of the
    /// next).
    last_snapshot: Option<std::path::PathBuf>,
}

impl Link {
    fn new(stream: Box<dyn Stream>, peer: String, ready: proto::Ready) -> Self {
        Link {
            stream,
            peer,
            target: ready
                .hashes
                .map(|h| h.into_iter().map(proto::digest_from_hex).collect()),
            sent: Vec::new(),
            passes: 0,
            last_snapshot: None,
        }
    }
}

impl MoveLink for Link {
    fn pass(
        &mut self,
        src: &ballast_core::moves::MoveData,
        progress: &ballast_core::progress::Progress,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<ballast_core::moves::PassStats, DriverError> {
        self.passes += 1;
        let peer = self.peer.clone();
        let r = match src {
            ballast_core::moves::MoveData::Image(path) => {
                let target = self.target.get_or_insert_with(Vec::new);
                image::send_pass(
                    &mut self.stream,
                    path,
                    target,
                    &mut self.sent,
                    progress,
                    cancel,
                )
            }
            ballast_core::moves::MoveData::Subvolume { path, work } => subvol::send_pass(
                &mut self.stream,
                path,
                work,
                &mut self.last_snapshot,
                progress,
                cancel,
            ),
        };
        r.map_err(|e| link_error(&peer, e))
    }

    fn verify(&mut self, src: &ballast_core::moves::MoveData) -> Result<(), DriverError> {
        let hashes = match src {
            ballast_core::moves::MoveData::Image(_) => {
                Some(self.sent.iter().map(proto::digest_hex).collect())
            }
            ballast_core::moves::MoveData::Subvolume { .. } => None,
        };
        let peer = self.peer.clone();
        let r = (|| {
            proto::send_json(&mut self.stream, proto::VERIFY, &proto::Verify { hashes })?;
            let _: proto::Done = proto::expect_json(&mut self.stream, proto::VERIFIED)?;
            Ok(())
        })();
        r.map_err(|e| link_error(&peer, e))
    }

    fn install(&mut self) -> Result<(), DriverError> {
        let peer = self.peer.clone();
        let r = (|| {
            proto::send_json(&mut self.stream, proto::INSTALL, &proto::Done::default())?;
            let _: proto::Done = proto::expect_json(&mut self.stream, proto::INSTALLED)?;
            Ok(())
        })();
        r.map_err(|e| link_error(&peer, e))
    }
}

fn accept_loop(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    receiver: Weak<dyn MoveReceiver>,
) {
    let running = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if receiver.strong_count() == 0 {
            return;
        }
        let tcp = match conn {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a move stream failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if running.load(Ordering::Relaxed) >= MAX_STREAMS {
            tracing::warn!("too many move streams; refusing one");
            continue;
        }
        let (config, receiver) = (Arc::clone(&config), receiver.clone());
        let slot = Slot::take(&running);
        let spawned = std::thread::Builder::new()
            .name("transfer-recv".into())
            .spawn(move || {
                // Given back however the stream ends (a panic included).
                let _slot = slot;
                let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                if let Err(e) = serve(tcp, config, &receiver) {
                    tracing::warn!(peer, error = %e, "a move stream ended with an error");
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a thread for a move stream");
        }
    }
}

/// One of [`MAX_STREAMS`], held by a stream's thread.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(running: &Arc<AtomicUsize>) -> Slot {
        running.fetch_add(1, Ordering::Relaxed);
        Slot(Arc::clone(running))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One incoming stream: the hello, then passes until the sender closes.
fn serve(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    receiver: &Weak<dyn MoveReceiver>,
) -> Result<(), proto::ProtoError> {
    set_timeouts(&tcp)?;
    let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
    let mut tls: TlsServer = rustls::StreamOwned::new(conn, tcp);
    serve_stream(&mut tls, receiver)
}

/// The receiving end of a stream, TLS or local.
fn serve_stream<S: Read + Write>(
    tls: &mut S,
    receiver: &Weak<dyn MoveReceiver>,
) -> Result<(), proto::ProtoError> {
    let hello: MoveHello = proto::expect_json(tls, proto::HELLO)?;
    let Some(rx) = receiver.upgrade() else {
        return Ok(());
    };
    let data = match rx.accept(&hello) {
        Ok(d) => d,
        Err(e) => {
            let class = match &e {
                ballast_core::Error::InvalidArgument(_) | ballast_core::Error::NotFound { .. } => {
                    "refused"
                }
                ballast_core::Error::NoSpace(_) | ballast_core::Error::Capacity { .. } => {
                    "no_space"
                }
                _ => "failed",
            };
            proto::send_error(tls, class, &e.to_string())?;
            return Ok(());
        }
    };
    drop(rx);
    tracing::info!(volume = %hello.volume, id = %hello.move_id, "receiving a move");
    match data {
        ballast_core::moves::MoveData::Image(path) => {
            image::receive(tls, &path, hello.size_bytes, &hello, receiver)
        }
        ballast_core::moves::MoveData::Subvolume { work, .. } => {
            subvol::receive(tls, &work, &hello, receiver)
        }
    }
}

/// Answer INSTALL: the receiver puts the data in place.
fn install<S: Read + Write>(
    tls: &mut S,
    hello: &MoveHello,
    receiver: &Weak<dyn MoveReceiver>,
) -> Result<(), proto::ProtoError> {
    let Some(rx) = receiver.upgrade() else {
        return proto::send_error(tls, "failed", "the node is stopping");
    };
    match rx.install(hello) {
        Ok(()) => proto::send_json(tls, proto::INSTALLED, &proto::Done::default()),
        Err(e) => proto::send_error(tls, "failed", &e.to_string()),
    }
}

/// Accepts exactly the certificate whose SHA-256 the store published, and
/// checks the handshake's signatures with it.
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let got = fingerprint(end_entity.as_ref());
        // The fingerprint is public (it is in the store); only equality matters.
        if got == self.fingerprint {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the node's certificate {got} is not the one its record names ({})",
                self.fingerprint
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
