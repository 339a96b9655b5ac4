//! Accept any `:authority` on the CSI unix socket.
//!
//! gRPC C-core clients (Python `grpcio`, Ruby, C++; since grpc 1.57) send
//! a unix socket target's path, percent-encoded, as `:authority`
//! (`%2Frun%2Fballast%2Fcsi.sock`). h2 parses every request's `:authority`
//! into an `http::uri::Authority` before hyper or tonic see the request, and
//! `http` refuses a `%` outside the userinfo (its `InvalidPercent`), so h2
//! answers RST_STREAM(PROTOCOL_ERROR) and no service runs. Neither crate
//! can be told otherwise: h2 0.4.20 and http 1.5.0 (the newest) parse
//! strictly and have no option (hyperium/h2#487 and #619, open, ask for
//! one); Go clients work because grpc-go sends `localhost`.
//!
//! On a unix socket the authority names nothing (there is one server at
//! the end of the path), so [`AuthorityFix`] wraps each accepted
//! connection's read half: it relays the client's HTTP/2 frames unchanged,
//! except header blocks, which it decodes with the client's HPACK context
//! and re-encodes as literals without indexing (so the server's HPACK table
//! stays empty and never disagrees with the client's), with an authority
//! that does not parse replaced by `localhost`, the name gRPC uses for unix
//! sockets. The write half, and everything else, is untouched.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Every HTTP/2 peer accepts frames this large (SETTINGS_MAX_FRAME_SIZE's
/// initial value), whatever it advertised.
const MAX_FRAME: usize = 16_384;
/// A header block larger than this closes the connection (the server's
/// own header list limit is far below it).
const MAX_BLOCK: usize = 1 << 20;
/// The client may grow its HPACK table only as far as the server's
/// SETTINGS_HEADER_TABLE_SIZE allows (h2: 4096); this bounds what a client
/// that ignores it can make us hold.
const MAX_TABLE: usize = 1 << 16;
/// What a refused authority becomes.
const LOCALHOST: &[u8] = b"localhost";

/// A connection whose incoming header blocks carry only authorities that
/// h2 accepts. See the module documentation.
pub struct AuthorityFix<S> {
    inner: S,
    decoder: loona_hpack::Decoder<'static>,
    /// Bytes read from the client, not yet relayed.
    input: Vec<u8>,
    /// Bytes ready for the server, from `output[sent..]`.
    output: Vec<u8>,
    sent: usize,
    state: State,
    eof: bool,
}

enum State {
    /// The connection preface: this many bytes still pass through.
    Preface(usize),
    /// At a frame header.
    Frame,
    /// Inside a frame that is relayed as it is: this many payload bytes.
    Relay(usize),
    /// A HEADERS frame without END_HEADERS: its block until CONTINUATION
    /// frames end it.
    Block(PendingBlock),
}

struct PendingBlock {
    stream: [u8; 4],
    flags: u8,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("http/2 relay: {msg}"))
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(MAX_TABLE);
        AuthorityFix {
            inner,
            decoder,
            input: Vec::new(),
            output: Vec::new(),
            sent: 0,
            state: State::Preface(PREFACE_LEN),
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Move what `input` holds to `output` as far as it goes.
    fn process(&mut self) -> io::Result<()> {
        loop {
            match &mut self.state {
                State::Preface(left) | State::Relay(left) => {
                    let n = (*left).min(self.input.len());
                    if n == 0 && *left > 0 {
                        return Ok(());
                    }
                    self.output.extend(self.input.drain(..n));
                    *left -= n;
                    if *left == 0 {
                        self.state = State::Frame;
                    }
                }
                State::Frame | State::Block(_) => {
                    if self.input.len() < FRAME_HEADER_LEN {
                        return Ok(());
                    }
                    let h = &self.input[..FRAME_HEADER_LEN];
                    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    let (kind, flags) = (h[3], h[4]);
                    let stream = [h[5], h[6], h[7], h[8]];
                    let pending = matches!(self.state, State::Block(_));
                    if kind != HEADERS && kind != CONTINUATION {
                        if pending {
                            return Err(invalid("a header block was interrupted"));
                        }
                        self.output.extend(self.input.drain(..FRAME_HEADER_LEN));
                        self.state = State::Relay(len);
                        continue;
                    }
                    if len > MAX_BLOCK {
                        return Err(invalid("header frame too large"));
                    }
                    if self.input.len() < FRAME_HEADER_LEN + len {
                        return Ok(());
                    }
                    let frame: Vec<u8> = self.input.drain(..FRAME_HEADER_LEN + len).collect();
                    let payload = &frame[FRAME_HEADER_LEN..];
                    let mut block = match std::mem::replace(&mut self.state, State::Frame) {
                        State::Block(b) if kind == CONTINUATION && b.stream == stream => b,
                        State::Frame if kind == HEADERS => headers_frame(stream, flags, payload)?,
                        State::Frame => {
                            // A CONTINUATION with no block open is the
                            // server's protocol error to answer.
                            self.output.extend_from_slice(&frame);
                            continue;
                        }
                        _ => return Err(invalid("a header block was interrupted")),
                    };
                    if kind == CONTINUATION {
                        block.fragment.extend_from_slice(payload);
                    }
                    if block.fragment.len() > MAX_BLOCK {
                        return Err(invalid("header block too large"));
                    }
                    if flags & END_HEADERS == 0 {
                        self.state = State::Block(block);
                        continue;
                    }
                    let fields = self.reencode(&block.fragment)?;
                    write_block(&mut self.output, &block, &fields);
                }
            }
        }
    }

    /// Decode a complete header block in the client's HPACK context and
    /// encode it again without the table, fixing the authority.
    fn reencode(&mut self, fragment: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(fragment.len() * 2);
        self.decoder
            .decode_with_cb(fragment, |name: Cow<[u8]>, value: Cow<[u8]>| {
                let value: &[u8] = if &*name == b":authority" && !accepted(&value) {
                    LOCALHOST
                } else {
                    &value
                };
                literal(&mut out, &name, value);
            })
            .map_err(|e| invalid(&format!("hpack: {e:?}")))?;
        Ok(out)
    }
}

/// Whether h2 takes this `:authority` as it is.
fn accepted(value: &[u8]) -> bool {
    axum::http::uri::Authority::try_from(value).is_ok()
}

/// The block fragment (and priority) of a HEADERS frame, padding removed.
fn headers_frame(stream: [u8; 4], flags: u8, payload: &[u8]) -> io::Result<PendingBlock> {
    let mut rest = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        let (&p, r) = rest.split_first().ok_or_else(|| invalid("bad padding"))?;
        pad = usize::from(p);
        rest = r;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        if rest.len() < 5 {
            return Err(invalid("bad priority"));
        }
        let mut p = [0; 5];
        p.copy_from_slice(&rest[..5]);
        priority = Some(p);
        rest = &rest[5..];
    }
    if pad > rest.len() {
        return Err(invalid("bad padding"));
    }
    Ok(PendingBlock {
        stream,
        flags,
        priority,
        fragment: rest[..rest.len() - pad].to_vec(),
    })
}

/// A header field as a literal without indexing, with a literal name, no
/// Huffman coding (RFC 7541, 6.2.2).
fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    for s in [name, value] {
        // Writing to a Vec cannot fail.
        let _ = loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, out);
        out.extend_from_slice(s);
    }
}

/// The re-encoded block as one HEADERS frame and as many CONTINUATION
/// frames as [`MAX_FRAME`] needs.
fn write_block(out: &mut Vec<u8>, block: &PendingBlock, fields: &[u8]) {
    let prio: &[u8] = block.priority.as_ref().map_or(&[], |p| p.as_slice());
    let first = fields.len().min(MAX_FRAME - prio.len());
    let mut chunks = vec![&fields[..first]];
    chunks.extend(fields[first..].chunks(MAX_FRAME));
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let (kind, mut flags, head) = if i == 0 {
            (HEADERS, block.flags & (END_STREAM | PRIORITY), prio)
        } else {
            (CONTINUATION, 0, &[][..])
        };
        if i == last {
            flags |= END_HEADERS;
        }
        let len = head.len() + chunk.len();
        // Below MAX_FRAME, so three bytes hold it.
        let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
        out.extend_from_slice(&len[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&block.stream);
        out.extend_from_slice(head);
        out.extend_from_slice(chunk);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.sent < this.output.len() {
                let n = buf.remaining().min(this.output.len() - this.sent);
                buf.put_slice(&this.output[this.sent..this.sent + n]);
                this.sent += n;
                if this.sent == this.output.len() {
                    this.output.clear();
                    this.sent = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // What is left is an unfinished frame: the server sees the
                // connection end inside it, as it would have.
                let rest = std::mem::take(&mut this.input);
                if rest.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.output = rest;
                continue;
            }
            let mut chunk = [0u8; 16_384];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            if rb.filled().is_empty() {
                this.eof = true;
                continue;
            }
            this.input.extend_from_slice(rb.filled());
            this.process()?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = len[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Split relayed bytes into (kind, flags, stream, payload) frames.
    fn frames(mut b: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let len = usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]);
            let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
            out.push((b[3], b[4], stream, b[9..9 + len].to_vec()));
            b = &b[9 + len..];
        }
        out
    }

    async fn relay(input: Vec<u8>) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut fix = AuthorityFix::new(server);
        // Written in small pieces: frames cross reads.
        let writer = tokio::spawn(async move {
            for piece in input.chunks(7) {
                client.write_all(piece).await.unwrap();
            }
            client.shutdown().await.unwrap();
        });
        let mut out = Vec::new();
        fix.read_to_end(&mut out).await.unwrap();
        writer.await.unwrap();
        out
    }

    fn headers(authority: &[u8], path: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (b":path".to_vec(), path.to_vec()),
            (b":authority".to_vec(), authority.to_vec()),
            (b"content-type".to_vec(), b"application/grpc".to_vec()),
        ]
    }

    #[tokio::test]
    async fn a_percent_encoded_authority_becomes_localhost_in_every_block() {
        let bad = b"%2Frun%2Fballast%2Fcsi.sock";
        // The client's encoder indexes what it sends, so the second request
        // names the authority only by its dynamic table index.
        let mut enc = loona_hpack::Encoder::new();
        let h1 = headers(bad, b"/csi.v1.Identity/GetPluginInfo");
        let h2 = headers(bad, b"/csi.v1.Node/NodeGetCapabilities");
        let b1 = enc.encode(h1.iter().map(|(n, v)| (&n[..], &v[..])));
        let b2 = enc.encode(h2.iter().map(|(n, v)| (&n[..], &v[..])));
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS
        input.extend(frame(HEADERS, END_HEADERS, 1, &b1));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0")); // DATA
                                                                // The second block split over a padded, prioritised HEADERS frame
                                                                // and a CONTINUATION.
        let (a, b) = b2.split_at(b2.len() / 2);
        let mut p = vec![2u8, 0, 0, 0, 0, 16];
        p.extend_from_slice(a);
        p.extend_from_slice(&[0, 0]);
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 3, &p));
        input.extend(frame(CONTINUATION, END_HEADERS, 3, b));

        let out = relay(input).await;
        assert_eq!(&out[..PREFACE.len()], PREFACE);
        let got = frames(&out[PREFACE.len()..]);
        let kinds: Vec<(u8, u8, u32)> = got.iter().map(|f| (f.0, f.1, f.2)).collect();
        assert_eq!(
            kinds,
            [
                (0x4, 0, 0),
                (HEADERS, END_HEADERS, 1),
                (0x0, END_STREAM, 1),
                (HEADERS, PRIORITY | END_STREAM | END_HEADERS, 3),
            ]
        );
        assert_eq!(got[0].3, [0, 3, 0, 0, 0, 100]);
        assert_eq!(got[2].3, b"\0\0\0\0\0");
        assert_eq!(&got[3].3[..5], &[0, 0, 0, 0, 16]);
        // A fresh decoder reads both: the server's table is never used.
        for (block, want) in [(&got[1].3[..], &h1), (&got[3].3[5..], &h2)] {
            let decoded = loona_hpack::Decoder::new().decode(block).unwrap();
            let mut want = want.clone();
            want[3].1 = b"localhost".to_vec();
            assert_eq!(&decoded, &want);
        }
    }

    #[tokio::test]
    async fn valid_authorities_and_big_blocks_pass_as_they_are() {
        let mut big = headers(b"csi.example:443", b"/csi.v1.Node/NodeGetInfo");
        big.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
        let block = loona_hpack::Encoder::new().encode(big.iter().map(|(n, v)| (&n[..], &v[..])));
        let mut input = PREFACE.to_vec();
        let (a, b) = block.split_at(10_000);
        input.extend(frame(HEADERS, 0, 5, a));
        input.extend(frame(CONTINUATION, END_HEADERS, 5, b));
        let out = relay(input).await;
        let got = frames(&out[PREFACE.len()..]);
        assert!(got.iter().all(|f| f.3.len() <= MAX_FRAME));
        assert_eq!(got[0].0, HEADERS);
        assert!(got[1..].iter().all(|f| f.0 == CONTINUATION));
        assert!(got[..got.len() - 1].iter().all(|f| f.1 & END_HEADERS == 0));
        assert_eq!(got.last().unwrap().1, END_HEADERS);
        let joined: Vec<u8> = got.iter().flat_map(|f| f.3.clone()).collect();
        assert_eq!(loona_hpack::Decoder::new().decode(&joined).unwrap(), big);
    }

    #[tokio::test]
    async fn a_block_interrupted_by_another_frame_closes_the_connection() {
        let block = loona_hpack::Encoder::new()
            .encode(headers(b"x", b"/").iter().map(|(n, v)| (&n[..], &v[..])));
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &block));
        input.extend(frame(0x0, 0, 1, b"data"));
        let (mut client, server) = tokio::io::duplex(1 << 16);
        client.write_all(&input).await.unwrap();
        drop(client);
        let mut out = Vec::new();
        let err = AuthorityFix::new(server)
            .read_to_end(&mut out)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
