//! Image moves: the file in fixed chunks, each named by its BLAKE3 digest.
//!
//! The target first tells the digest of every chunk it holds (a fresh file
//! is all holes), so each pass sends only the chunks whose digest differs:
//! everything the first time, what changed since on the final pass, and
//! what a resumed move still lacks. Chunks wholly in a hole are found with
//! SEEK_DATA without reading them, and all-zero chunks travel as a frame
//! without data; the target punches a hole for them, so the copy stays
//! sparse. Verification reads the target's file back from the start and
//! compares every digest with the source's last pass.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Weak;

use ballast_core::moves::{MoveHello, MoveReceiver, PassStats};
use ballast_core::progress::Progress;
use ballast_core::DriverError;

use crate::proto::{self, ProtoError};

/// The chunk size of image moves.
pub const CHUNK: u64 = 4 << 20;

/// The digest of a chunk of zeros (of any length): a hole.
const ZERO: [u8; 32] = [0u8; 32];

fn digest(data: &[u8]) -> [u8; 32] {
    if data.iter().all(|&b| b == 0) {
        ZERO
    } else {
        *blake3::hash(data).as_bytes()
    }
}

fn chunks_of(size: u64) -> u64 {
    size.div_ceil(CHUNK)
}

/// Whether `[start, end)` of `file` holds no data (all hole).
fn is_hole(file: &File, start: u64, end: u64) -> bool {
    let Ok(off) = libc::off_t::try_from(start) else {
        return false;
    };
    // SAFETY: lseek on a descriptor we own; it changes only the offset,
    // which nothing here uses (reads are positional).
    let next = unsafe { libc::lseek(file.as_raw_fd(), off, libc::SEEK_DATA) };
    if next < 0 {
        // ENXIO: no data past `start`; anything else: read it to be sure.
        return io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO);
    }
    u64::try_from(next).is_ok_and(|n| n >= end)
}

fn read_chunk(
    file: &File,
    path: &Path,
    index: u64,
    size: u64,
    buf: &mut Vec<u8>,
) -> Result<bool, DriverError> {
    let start = index * CHUNK;
    let end = (start + CHUNK).min(size);
    if is_hole(file, start, end) {
        return Ok(false);
    }
    let len = usize::try_from(end - start).unwrap_or(0);
    buf.resize(len, 0);
    file.read_exact_at(buf, start)
        .map_err(|e| DriverError::io(path, e))?;
    Ok(true)
}

/// How many threads read and hash a file's chunks at once: a pass that
/// sends nothing (the final pass of an idle volume, the target's check) is
/// one core hashing otherwise.
fn readers() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4) as u64)
}

/// The chunks reader `k` of `of` takes: a contiguous run of them, so each
/// reader's file reads stay sequential (readahead) on a cold cache.
fn share(n: u64, k: u64, of: u64) -> std::ops::Range<u64> {
    let per = n.div_ceil(of.max(1));
    (k * per).min(n)..((k + 1) * per).min(n)
}

/// The digest of every chunk of the first `size` bytes of `path`.
pub fn chunk_digests(path: &Path, size: u64) -> Result<Vec<[u8; 32]>, DriverError> {
    let n = chunks_of(size);
    let mut out =
        vec![ZERO; usize::try_from(n).map_err(|e| DriverError::io(path, io::Error::other(e)))?];
    let of = readers();
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..of)
            .map(|k| {
                s.spawn(move || -> Result<Vec<[u8; 32]>, DriverError> {
                    // A descriptor each: readahead is kept per open file.
                    let file = File::open(path).map_err(|e| DriverError::io(path, e))?;
                    let mut buf = Vec::new();
                    share(n, k, of)
                        .map(|i| {
                            Ok(if read_chunk(&file, path, i, size, &mut buf)? {
                                digest(&buf)
                            } else {
                                ZERO
                            })
                        })
                        .collect()
                })
            })
            .collect();
        let mut at = 0;
        for r in readers {
            let digests = r.join().map_err(|_| {
                DriverError::Unavailable(format!(
                    "hashing {} failed (a thread panicked)",
                    path.display()
                ))
            })??;
            out[at..at + digests.len()].copy_from_slice(&digests);
            at += digests.len();
        }
        Ok(out)
    })
}

/// One pass of the sender: read every chunk, send those the target lacks.
pub fn send_pass<S: Read + Write>(
    tls: &mut S,
    path: &Path,
    target: &mut Vec<[u8; 32]>,
    sent: &mut Vec<[u8; 32]>,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<PassStats, ProtoError> {
    let file = File::open(path).map_err(|e| DriverError::io(path, e))?;
    let size = file.metadata().map_err(|e| DriverError::io(path, e))?.len();
    let n = chunks_of(size);
    let n_usize = usize::try_from(n).map_err(io::Error::other)?;
    target.resize(n_usize, ZERO);
    sent.clear();
    sent.resize(n_usize, ZERO);
    progress.restart(size);
    let mut stats = PassStats::default();
    // Reading and hashing run ahead of the stream on threads of their own,
    // each over its share of the chunks; frames name their chunk, so they
    // may go in any order. Buffers come back once sent: a fresh 4 MiB one
    // per chunk would be faulted in and zeroed each time.
    type ReadChunk = Result<(u64, Option<Vec<u8>>, [u8; 32]), DriverError>;
    let of = readers();
    let (tx, rx) = std::sync::mpsc::sync_channel::<ReadChunk>(4);
    let (back, spare) = std::sync::mpsc::channel::<Vec<u8>>();
    let spare = std::sync::Mutex::new(spare);
    std::thread::scope(|s| -> Result<(), ProtoError> {
        for k in 0..of {
            let (tx, spare) = (tx.clone(), &spare);
            s.spawn(move || {
                let file = match File::open(path) {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = tx.send(Err(DriverError::io(path, e)));
                        return;
                    }
                };
                let mut kept: Option<Vec<u8>> = None;
                for i in share(n, k, of) {
                    if cancel.load(Ordering::Relaxed) {
                        return;
                    }
                    let mut buf = kept
                        .take()
                        .or_else(|| spare.lock().ok()?.try_recv().ok())
                        .unwrap_or_default();
                    let item = read_chunk(&file, path, i, size, &mut buf).map(|has_data| {
                        let d = if has_data { digest(&buf) } else { ZERO };
                        if d == ZERO {
                            kept = Some(buf);
                            (i, None, d)
                        } else {
                            (i, Some(buf), d)
                        }
                    });
                    let failed = item.is_err();
                    if tx.send(item).is_err() || failed {
                        return;
                    }
                }
            });
        }
        // The readers hold the only senders: the loop ends when all are done.
        drop(tx);
        for item in rx {
            if cancel.load(Ordering::Relaxed) {
                return Err(ProtoError::Local(DriverError::Busy(
                    "the move was cancelled".into(),
                )));
            }
            let (i, data, d) = item?;
            let idx = usize::try_from(i).map_err(io::Error::other)?;
            sent[idx] = d;
            let len = (size - i * CHUNK).min(CHUNK);
            if target[idx] != d {
                match &data {
                    Some(bytes) => {
                        proto::write_frame(tls, proto::CHUNK, &[&i.to_be_bytes(), &d, bytes])?;
                        stats.sent_bytes += bytes.len() as u64;
                    }
                    None => proto::write_frame(tls, proto::ZERO, &[&i.to_be_bytes()])?,
                }
                target[idx] = d;
            }
            if let Some(buf) = data {
                let _ = back.send(buf);
            }
            stats.scanned_bytes += len;
            progress.advance(len);
        }
        Ok(())
    })?;
    if cancel.load(Ordering::Relaxed) {
        return Err(ProtoError::Local(DriverError::Busy(
            "the move was cancelled".into(),
        )));
    }
    if sent.len() != n_usize || stats.scanned_bytes != size {
        return Err(ProtoError::Local(DriverError::Unavailable(format!(
            "reading {} stopped early",
            path.display()
        ))));
    }
    proto::send_json(
        tls,
        proto::PASS_END,
        &proto::Done {
            bytes: stats.sent_bytes,
        },
    )?;
    let _: proto::Done = proto::expect_json(tls, proto::PASS_DONE)?;
    Ok(stats)
}

/// The target's side of an image move, until the sender closes.
pub fn receive<S: Read + Write>(
    tls: &mut S,
    path: &Path,
    size: u64,
    hello: &MoveHello,
    receiver: &Weak<dyn MoveReceiver>,
) -> Result<(), ProtoError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| DriverError::io(path, e))?;
    let mut have = match chunk_digests(path, size) {
        Ok(h) => h,
        Err(e) => return proto::send_error(tls, "failed", &e.to_string()),
    };
    let hashes = have.iter().map(proto::digest_hex).collect();
    proto::send_json(
        tls,
        proto::READY,
        &proto::Ready {
            hashes: Some(hashes),
        },
    )?;
    let n = have.len();
    let mut buf = Vec::new();
    let mut received = 0u64;
    loop {
        let kind = match proto::read_frame(tls, &mut buf) {
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        match kind {
            proto::CHUNK | proto::ZERO => {
                let Some(index) = buf
                    .get(..8)
                    .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
                else {
                    return Err(proto::unexpected(kind));
                };
                let idx = usize::try_from(index).unwrap_or(usize::MAX);
                if idx >= n {
                    return proto::send_error(
                        tls,
                        "failed",
                        &format!("chunk {index} is past the end"),
                    );
                }
                let start = index * CHUNK;
                let len = (size - start).min(CHUNK);
                let r = if kind == proto::CHUNK {
                    if buf.len() < 40 || (buf.len() - 40) as u64 != len {
                        return proto::send_error(
                            tls,
                            "failed",
                            &format!("chunk {index} has the wrong length"),
                        );
                    }
                    have[idx].copy_from_slice(&buf[8..40]);
                    received += len;
                    file.write_all_at(&buf[40..], start)
                } else {
                    have[idx] = ZERO;
                    punch_hole(&file, start, len)
                };
                if let Err(e) = r {
                    let e = DriverError::io(path, e);
                    let class = if e.is_no_space() {
                        "no_space"
                    } else {
                        "failed"
                    };
                    return proto::send_error(tls, class, &e.to_string());
                }
            }
            proto::PASS_END => {
                proto::send_json(tls, proto::PASS_DONE, &proto::Done { bytes: received })?;
                start_writeback(&file);
            }
            proto::VERIFY => {
                let v: proto::Verify = proto::parse(&buf)?;
                // The read-back runs while the fsync waits for the disk:
                // both read the same pages, and the answer waits for both.
                let (synced, checked) = std::thread::scope(|s| {
                    let synced = s.spawn(|| file.sync_all());
                    let checked = verify(path, size, v.hashes.unwrap_or_default());
                    (synced.join(), checked)
                });
                match synced {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        return proto::send_error(
                            tls,
                            "failed",
                            &DriverError::io(path, e).to_string(),
                        )
                    }
                    Err(_) => return proto::send_error(tls, "failed", "the fsync thread panicked"),
                }
                match checked {
                    Ok(()) => proto::send_json(tls, proto::VERIFIED, &proto::Done { bytes: size })?,
                    Err(e) => {
                        let class = if matches!(e, DriverError::Corrupt(_)) {
                            "corrupt"
                        } else {
                            "failed"
                        };
                        proto::send_error(tls, class, &e.to_string())?;
                    }
                }
            }
            proto::INSTALL => crate::install(tls, hello, receiver)?,
            other => return Err(proto::unexpected(other)),
        }
    }
}

/// Read the file back and compare each chunk's digest with the source's.
fn verify(path: &Path, size: u64, expected: Vec<String>) -> Result<(), DriverError> {
    let got = chunk_digests(path, size)?;
    if got.len() != expected.len() {
        return Err(DriverError::Corrupt(format!(
            "{} holds {} chunks, the source {}",
            path.display(),
            got.len(),
            expected.len()
        )));
    }
    let bad: Vec<usize> = got
        .iter()
        .zip(expected)
        .enumerate()
        .filter(|(_, (g, e))| **g != proto::digest_from_hex(e.clone()))
        .map(|(i, _)| i)
        .collect();
    if let Some(first) = bad.first() {
        return Err(DriverError::Corrupt(format!(
            "{} of {} chunks read back differ from the source (first: chunk {first})",
            bad.len(),
            got.len()
        )));
    }
    Ok(())
}

/// Start writing what a pass wrote to disk, on a thread of its own: the
/// disk then works while the sender runs its next pass (which, for a
/// volume nobody wrote to meanwhile, reads and sends nothing), and the
/// check's fsync finds the most of it done. Advisory: a failure changes
/// nothing (the fsync still writes whatever is left).
fn start_writeback(file: &File) {
    let Ok(file) = file.try_clone() else { return };
    let _ = std::thread::Builder::new()
        .name("transfer-flush".into())
        .spawn(move || {
            // SAFETY: sync_file_range on a descriptor this thread owns, over
            // the whole file (length 0: to its end); it only starts
            // writeback of written pages.
            unsafe {
                libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
        });
}

fn punch_hole(file: &File, start: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(start), libc::off_t::try_from(len)) else {
        return Err(io::Error::other("offset out of range"));
    };
    // SAFETY: fallocate on a descriptor we own, within the file's size
    // (KEEP_SIZE): it only deallocates that range.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_see_holes_zeros_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let f = File::create(&p).unwrap();
        f.set_len(3 * CHUNK + 100).unwrap();
        f.write_all_at(&[7u8; 4096], CHUNK + 10).unwrap();
        // Written zeros read as a hole's digest.
        f.write_all_at(&vec![0u8; 8192], 2 * CHUNK).unwrap();
        let d = chunk_digests(&p, 3 * CHUNK + 100).unwrap();
        assert_eq!(d.len(), 4);
        assert_eq!(d[0], ZERO);
        assert_ne!(d[1], ZERO);
        assert_eq!(d[2], ZERO);
        assert_eq!(d[3], ZERO);
        f.write_all_at(&[1u8], 3 * CHUNK + 99).unwrap();
        let d2 = chunk_digests(&p, 3 * CHUNK + 100).unwrap();
        assert_eq!(d2[1], d[1]);
        assert_ne!(d2[3], ZERO);
    }

    #[test]
    fn the_readers_shares_cover_every_chunk_once_in_order() {
        for n in 0..40 {
            for of in 1..6 {
                let all: Vec<u64> = (0..of).flat_map(|k| share(n, k, of)).collect();
                assert_eq!(all, (0..n).collect::<Vec<_>>(), "n={n} of={of}");
            }
        }
    }

    #[test]
    fn digests_read_in_parallel_are_in_chunk_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let f = File::create(&p).unwrap();
        let n = 9;
        f.set_len(n * CHUNK).unwrap();
        for i in 0..n {
            f.write_all_at(&[u8::try_from(i + 1).unwrap(); 512], i * CHUNK + 7)
                .unwrap();
        }
        let got = chunk_digests(&p, n * CHUNK).unwrap();
        let f = File::open(&p).unwrap();
        let mut buf = Vec::new();
        for i in 0..n {
            assert!(read_chunk(&f, &p, i, n * CHUNK, &mut buf).unwrap());
            assert_eq!(got[usize::try_from(i).unwrap()], digest(&buf), "chunk {i}");
        }
    }
}
