//! The frames of a move stream: `kind: u8`, `len: u32` (big-endian), then
//! `len` bytes. Control frames carry JSON; data frames carry bytes.

use std::io::{self, Read, Write};

use ballast_core::DriverError;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub const HELLO: u8 = 1;
pub const READY: u8 = 2;
pub const ERROR: u8 = 3;
/// Image: `index: u64`, `digest: [u8; 32]`, then the chunk's bytes.
pub const CHUNK: u8 = 4;
/// Image: `index: u64`; the chunk is all zeros (a hole).
pub const ZERO: u8 = 5;
pub const PASS_END: u8 = 6;
pub const PASS_DONE: u8 = 7;
pub const VERIFY: u8 = 8;
pub const VERIFIED: u8 = 9;
pub const INSTALL: u8 = 10;
pub const INSTALLED: u8 = 11;
/// Subvolume: a `btrfs send` stream begins (JSON [`SendBegin`]).
pub const SEND_BEGIN: u8 = 12;
/// Subvolume: bytes of the send stream.
pub const STREAM: u8 = 13;

/// No frame is larger (a chunk and its header).
pub const MAX_FRAME: usize = 8 << 20;

#[derive(Debug)]
pub enum ProtoError {
    /// The peer answered with an error frame.
    Remote {
        class: String,
        message: String,
    },
    Io(io::Error),
    /// A failure on this side (reading the source, running a tool).
    Local(DriverError),
}

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtoError::Remote { message, .. } => write!(f, "{message}"),
            ProtoError::Io(e) => write!(f, "{e}"),
            ProtoError::Local(e) => write!(f, "{e}"),
        }
    }
}

impl From<io::Error> for ProtoError {
    fn from(e: io::Error) -> Self {
        ProtoError::Io(e)
    }
}

impl From<DriverError> for ProtoError {
    fn from(e: DriverError) -> Self {
        ProtoError::Local(e)
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Ready {
    /// Image moves: the digest of every chunk the target holds now (hex;
    /// zeros for a hole), so a resumed move sends only what differs.
    pub hashes: Option<Vec<String>>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Verify {
    /// Image moves: the digest of every chunk as the source read it last.
    pub hashes: Option<Vec<String>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Done {
    #[serde(default)]
    pub bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SendBegin {
    /// The snapshot's name (`btrfs receive` makes it in the work directory).
    pub name: String,
    /// The snapshot this one is sent against (incremental), if any.
    pub parent: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SendEnd {
    /// BLAKE3 of the whole send stream, which the target compares with
    /// what it fed to `btrfs receive`.
    pub digest: String,
    pub bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct ErrorBody {
    class: String,
    message: String,
}

pub fn write_frame<W: Write>(w: &mut W, kind: u8, parts: &[&[u8]]) -> io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(len).map_err(|_| io::Error::other("frame too large"))?;
    // The head and the small parts in one write: over TLS each write is a
    // record of its own (and a send with TCP_NODELAY).
    let (data, small) = match parts.split_last() {
        Some((last, rest)) if last.len() > 4096 => (Some(*last), rest),
        _ => (None, parts),
    };
    let mut head = Vec::with_capacity(5 + small.iter().map(|p| p.len()).sum::<usize>());
    head.push(kind);
    head.extend_from_slice(&len.to_be_bytes());
    for p in small {
        head.extend_from_slice(p);
    }
    w.write_all(&head)?;
    if let Some(d) = data {
        w.write_all(d)?;
    }
    Ok(())
}

/// Read one frame into `buf`; returns its kind. EOF before a frame is
/// `UnexpectedEof`.
pub fn read_frame<R: Read>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<u8> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes is larger than any the protocol sends"),
        ));
    }
    buf.resize(len, 0);
    r.read_exact(buf)?;
    Ok(head[0])
}

pub fn send_json<W: Write, T: Serialize>(w: &mut W, kind: u8, v: &T) -> Result<(), ProtoError> {
    let body = serde_json::to_vec(v).map_err(io::Error::other)?;
    write_frame(w, kind, &[&body])?;
    w.flush()?;
    Ok(())
}

pub fn send_error<W: Write>(w: &mut W, class: &str, message: &str) -> Result<(), ProtoError> {
    send_json(
        w,
        ERROR,
        &ErrorBody {
            class: class.to_string(),
            message: message.to_string(),
        },
    )
}

/// An error frame's content as the error it reports.
pub fn remote(buf: &[u8]) -> ProtoError {
    match serde_json::from_slice::<ErrorBody>(buf) {
        Ok(b) => ProtoError::Remote {
            class: b.class,
            message: b.message,
        },
        Err(_) => ProtoError::Remote {
            class: "failed".into(),
            message: String::from_utf8_lossy(buf).into_owned(),
        },
    }
}

pub fn parse<T: DeserializeOwned>(buf: &[u8]) -> Result<T, ProtoError> {
    serde_json::from_slice(buf)
        .map_err(|e| ProtoError::Io(io::Error::new(io::ErrorKind::InvalidData, e)))
}

/// Read a frame that must be `kind` (or an error frame).
pub fn expect_json<R: Read, T: DeserializeOwned>(r: &mut R, kind: u8) -> Result<T, ProtoError> {
    let mut buf = Vec::new();
    let got = read_frame(r, &mut buf)?;
    if got == ERROR {
        return Err(remote(&buf));
    }
    if got != kind {
        return Err(unexpected(got));
    }
    parse(&buf)
}

pub fn unexpected(kind: u8) -> ProtoError {
    ProtoError::Io(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected frame {kind}"),
    ))
}

pub fn digest_hex(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A malformed digest reads as all ones, which matches nothing.
pub fn digest_from_hex(s: String) -> [u8; 32] {
    let mut out = [0xffu8; 32];
    if s.len() != 64 {
        return out;
    }
    for (i, o) in out.iter_mut().enumerate() {
        match u8::from_str_radix(&s[2 * i..2 * i + 2], 16) {
            Ok(b) => *o = b,
            Err(_) => return [0xff; 32],
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_back_as_written() {
        let data = vec![7u8; 64 << 10];
        let mut wire = Vec::new();
        write_frame(&mut wire, CHUNK, &[&3u64.to_be_bytes(), &[9u8; 32], &data]).unwrap();
        write_frame(&mut wire, ZERO, &[&4u64.to_be_bytes()]).unwrap();
        write_frame(&mut wire, PASS_END, &[]).unwrap();
        let mut r = wire.as_slice();
        let mut buf = Vec::new();
        assert_eq!(read_frame(&mut r, &mut buf).unwrap(), CHUNK);
        assert_eq!(buf.len(), 40 + data.len());
        assert_eq!(
            (&buf[..8], &buf[8..40], &buf[40..]),
            (&3u64.to_be_bytes()[..], &[9u8; 32][..], &data[..])
        );
        assert_eq!(read_frame(&mut r, &mut buf).unwrap(), ZERO);
        assert_eq!(buf, 4u64.to_be_bytes());
        assert_eq!(read_frame(&mut r, &mut buf).unwrap(), PASS_END);
        assert!(buf.is_empty());
        assert!(r.is_empty());
    }
}
