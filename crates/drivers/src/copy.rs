//! Copying a volume's storage: a reflink where the filesystem shares
//! blocks (xfs with reflink, btrfs), else a sparse-aware copy that moves only
//! the data extents (SEEK_DATA/SEEK_HOLE, copy_file_range in the kernel).
//! The copy goes to a temporary name and is renamed into place, so a crash
//! never leaves a half copy under the final name.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ballast_core::progress::Progress;
use ballast_core::DriverError;
use nix::errno::Errno;
use nix::unistd::{lseek, Whence};

use crate::sync_dir;

/// How a copy was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    Reflink,
    Sparse,
}

// _IOW(0x94, 9, int) from <linux/fs.h>.
const FICLONE: libc::Ioctl = 0x4004_9409;

/// The temporary name a copy is made under.
pub fn partial_name(dst: &Path) -> PathBuf {
    let mut s = dst.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// Whether files in `dir` can be reflinked (FICLONE): one block written to
/// an unnamed file (O_TMPFILE) and cloned into another, so nothing is left
/// behind. Any failure is "no", which charges copies their full size.
pub fn reflink_supported(dir: &Path) -> bool {
    let tmp = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .open(dir)
    };
    let (Ok(mut from), Ok(to)) = (tmp(), tmp()) else {
        return false;
    };
    if from.write_all(&[0x5a; 4096]).is_err() {
        return false;
    }
    // SAFETY: FICLONE takes the source fd as its argument; both fds are open
    // for the duration of the call.
    unsafe { libc::ioctl(to.as_raw_fd(), FICLONE, from.as_raw_fd()) == 0 }
}

// _IOWR('f', 11, struct fiemap) from <linux/fs.h>.
const FS_IOC_FIEMAP: libc::Ioctl = 0xC020_660B;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
const FIEMAP_EXTENT_SHARED: u32 = 0x2000;
/// Extents asked for per call.
const FIEMAP_BATCH: usize = 256;
const FIEMAP_BATCH_U32: u32 = 256;
const _: () = assert!(FIEMAP_BATCH_U32 as usize == FIEMAP_BATCH);

/// `struct fiemap_extent`.
#[repr(C)]
#[derive(Clone, Copy)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

/// `struct fiemap` with room for [`FIEMAP_BATCH`] extents after it.
#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [FiemapExtent; FIEMAP_BATCH],
}

const _: () = assert!(std::mem::size_of::<FiemapExtent>() == 56);
const _: () = assert!(std::mem::size_of::<Fiemap>() == 32 + 56 * FIEMAP_BATCH);

/// The extents of `path`: the bytes of those no other file shares, and the
/// physical (start, end) ranges of those it shares (FIEMAP_EXTENT_SHARED).
/// Extents not yet allocated (delayed allocation) are new data, so they
/// count as its own.
pub fn extents(path: &Path) -> Result<(u64, Vec<(u64, u64)>), DriverError> {
    let file = File::open(path).map_err(|e| DriverError::io(path, e))?;
    let empty = FiemapExtent {
        logical: 0,
        physical: 0,
        length: 0,
        reserved64: [0; 2],
        flags: 0,
        reserved: [0; 3],
    };
    let mut map = Box::new(Fiemap {
        start: 0,
        length: 0,
        flags: 0,
        mapped_extents: 0,
        extent_count: 0,
        reserved: 0,
        extents: [empty; FIEMAP_BATCH],
    });
    let mut pos = 0u64;
    let mut own = 0u64;
    let mut shared = Vec::new();
    loop {
        map.start = pos;
        map.length = u64::MAX - pos;
        map.flags = 0;
        map.mapped_extents = 0;
        map.extent_count = FIEMAP_BATCH_U32;
        // SAFETY: FS_IOC_FIEMAP reads the header and writes at most
        // `extent_count` extents after it, which `map` has room for; the
        // file is open for the call.
        let ret = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                FS_IOC_FIEMAP,
                std::ptr::from_mut(map.as_mut()),
            )
        };
        Errno::result(ret).map_err(|e| DriverError::io(path, e.into()))?;
        let n = (map.mapped_extents as usize).min(FIEMAP_BATCH);
        let Some(last) = map.extents[..n].last().copied() else {
            return Ok((own, shared));
        };
        for e in &map.extents[..n] {
            if e.flags & FIEMAP_EXTENT_SHARED == 0 {
                own = own.saturating_add(e.length);
            } else {
                shared.push((e.physical, e.physical.saturating_add(e.length)));
            }
        }
        let next = last.logical.saturating_add(last.length);
        if last.flags & FIEMAP_EXTENT_LAST != 0 || next <= pos {
            return Ok((own, shared));
        }
        pos = next;
    }
}

/// Bytes of `path`'s extents that no other file shares: what a reflinked
/// copy holds of its own.
pub fn unshared_bytes(path: &Path) -> Result<u64, DriverError> {
    extents(path).map(|(own, _)| own)
}

/// Bytes covered by a set of (start, end) ranges, each byte once.
pub fn union_len(mut ranges: Vec<(u64, u64)>) -> u64 {
    ranges.sort_unstable();
    let mut total = 0u64;
    let mut current: Option<(u64, u64)> = None;
    for (a, b) in ranges {
        match current {
            Some((s, e)) if a <= e => current = Some((s, e.max(b))),
            Some((s, e)) => {
                total += e - s;
                current = Some((a, b));
            }
            None => current = Some((a, b)),
        }
    }
    total + current.map_or(0, |(s, e)| e - s)
}

/// Copy `src` to `dst` (replacing it) and make it `len` bytes long if that
/// is more than `src`'s length. A full copy counts its data bytes into
/// `progress`; a reflink moves none. With `reflink_only`, a copy that
/// cannot be a reflink fails instead of moving the data (its admission
/// charged only what a reflink holds).
pub fn copy_image(
    src: &Path,
    dst: &Path,
    len: u64,
    reflink_only: bool,
    progress: &Progress,
) -> Result<CopyKind, DriverError> {
    let tmp = partial_name(dst);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(DriverError::io(&tmp, e)),
    }
    let from = File::open(src).map_err(|e| DriverError::io(src, e))?;
    let src_len = from.metadata().map_err(|e| DriverError::io(src, e))?.len();
    let to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| DriverError::io(&tmp, e))?;
    // SAFETY: FICLONE takes the source fd as its argument; both fds are open
    // for the duration of the call.
    let ret = unsafe { libc::ioctl(to.as_raw_fd(), FICLONE, from.as_raw_fd()) };
    let kind = if ret == 0 {
        CopyKind::Reflink
    } else if reflink_only {
        let e = std::io::Error::last_os_error();
        drop(to);
        let _ = std::fs::remove_file(&tmp);
        return Err(DriverError::io(
            src,
            std::io::Error::new(
                e.kind(),
                format!("reflink failed ({e}); the copy was admitted as a reflink, so no full copy is made"),
            ),
        ));
    } else {
        sparse_copy(&from, &to, src_len, progress).map_err(|e| DriverError::io(&tmp, e))?;
        CopyKind::Sparse
    };
    to.set_len(len.max(src_len))
        .map_err(|e| DriverError::io(&tmp, e))?;
    to.sync_all().map_err(|e| DriverError::io(&tmp, e))?;
    std::fs::rename(&tmp, dst).map_err(|e| DriverError::io(dst, e))?;
    if let Some(dir) = dst.parent() {
        sync_dir(dir)?;
    }
    Ok(kind)
}

/// The (start, end) byte ranges of `file` that hold data, up to `end`.
fn data_extents(file: &File, end: i64) -> std::io::Result<Vec<(i64, i64)>> {
    let mut extents = Vec::new();
    let mut pos: i64 = 0;
    while pos < end {
        let data = match lseek(file.as_raw_fd(), pos, Whence::SeekData) {
            Ok(d) => d,
            // No data after pos: the rest is a hole.
            Err(Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(file.as_raw_fd(), data, Whence::SeekHole)?.min(end);
        if data >= hole {
            break;
        }
        extents.push((data, hole));
        pos = hole;
    }
    Ok(extents)
}

/// How much one copy_file_range call moves: small enough for a progress
/// bar to move smoothly, large enough that the calls cost nothing.
const COPY_CHUNK: usize = 32 << 20;

/// Copy only the data extents of `from` into `to` at the same offsets. The
/// extents are listed first, so the progress total is known from the start.
fn sparse_copy(from: &File, to: &File, len: u64, progress: &Progress) -> std::io::Result<()> {
    to.set_len(len)?;
    let end = i64::try_from(len).map_err(|_| std::io::Error::other("file too large"))?;
    let extents = data_extents(from, end)?;
    progress.set_total(extents.iter().map(|(a, b)| (b - a) as u64).sum());
    for (data, hole) in extents {
        let mut off_in = data;
        let mut off_out = data;
        while off_in < hole {
            let want = usize::try_from(hole - off_in)
                .unwrap_or(usize::MAX)
                .min(COPY_CHUNK);
            let n =
                nix::fcntl::copy_file_range(from, Some(&mut off_in), to, Some(&mut off_out), want)?;
            if n == 0 {
                return Err(std::io::Error::other("source shrank during the copy"));
            }
            progress.advance(n as u64);
        }
    }
    Ok(())
}

/// Copy a directory tree (files, directories, symlinks, permissions,
/// owners) from
/// `src` to `dst`, which must not exist, counting file bytes into
/// `progress`. Symlinks are copied, not followed.
pub fn copy_tree(src: &Path, dst: &Path, progress: &Progress) -> std::io::Result<()> {
    progress.set_total(tree_bytes(src)?);
    copy_tree_counted(src, dst, progress)
}

/// Bytes in the regular files under `dir` (symlinks not followed).
fn tree_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        if ft.is_dir() {
            total += tree_bytes(&entry.path())?;
        } else if ft.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

fn copy_tree_counted(src: &Path, dst: &Path, progress: &Progress) -> std::io::Result<()> {
    let md = std::fs::symlink_metadata(src)?;
    std::fs::create_dir(dst)?;
    std::fs::set_permissions(dst, md.permissions())?;
    own_like(&md, dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let ft = entry.file_type()?;
        if ft.is_dir() {
            copy_tree_counted(&from, &to, progress)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
            own_like(&entry.metadata()?, &to)?;
        } else if ft.is_file() {
            progress.advance(std::fs::copy(&from, &to)?);
            own_like(&entry.metadata()?, &to)?;
        }
        // Sockets, fifos and devices are not data: skipped.
    }
    Ok(())
}

/// Give `path` (not what a link points to) the owner of `md`: a copy made
/// as root would otherwise belong to root.
fn own_like(md: &std::fs::Metadata, path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    std::os::unix::fs::lchown(path, Some(md.uid()), Some(md.gid()))
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let src = dir.path().join("a.img");
        let mut f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(10 << 20)).unwrap();
        f.write_all(&[7u8; 8192]).unwrap();
        f.seek(SeekFrom::Start(50 << 20)).unwrap();
        f.write_all(b"tail").unwrap();
        f.sync_all().unwrap();
        let dst = dir.path().join("b.img");
        let progress = Progress::none();
        let kind = copy_image(&src, &dst, 80 << 20, false, &progress).unwrap();
        if kind == CopyKind::Sparse {
            // Two data extents, whole blocks: 8 KiB and the block with "tail".
            let block = std::fs::metadata(&src).unwrap().blksize();
            assert_eq!(progress.get(), (8192 + block, 8192 + block));
        }
        let a = std::fs::read(&src).unwrap();
        let b = std::fs::read(&dst).unwrap();
        assert_eq!(b.len(), 80 << 20);
        assert_eq!(&b[..a.len()], &a[..]);
        assert!(b[a.len()..].iter().all(|&x| x == 0));
        // Sparse: far fewer blocks than the length.
        assert!(std::fs::metadata(&dst).unwrap().blocks() * 512 < 8 << 20);
        assert!(!partial_name(&dst).exists());
    }

    #[test]
    fn shared_ranges_count_once() {
        assert_eq!(union_len(vec![]), 0);
        assert_eq!(union_len(vec![(0, 10)]), 10);
        assert_eq!(union_len(vec![(0, 10), (0, 10), (5, 15)]), 15);
        assert_eq!(union_len(vec![(20, 30), (0, 10), (10, 12)]), 22);
    }

    #[test]
    fn extents_of_an_unshared_file_are_its_own() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("f");
        let mut f = File::create(&path).unwrap();
        f.set_len(16 << 20).unwrap();
        f.write_all(&[1u8; 1 << 20]).unwrap();
        f.sync_all().unwrap();
        let (own, shared) = extents(&path).unwrap();
        assert_eq!(own, 1 << 20);
        assert!(shared.is_empty());
    }

    #[test]
    fn tree_copy() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("s");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("d/f"), b"x").unwrap();
        std::fs::write(src.join("g"), [1u8; 1000]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("l")).unwrap();
        let progress = Progress::none();
        copy_tree(&src, &dir.path().join("t"), &progress).unwrap();
        assert_eq!(progress.get(), (1001, 1001));
        assert_eq!(std::fs::read(dir.path().join("t/d/f")).unwrap(), b"x");
        assert_eq!(
            std::fs::read_link(dir.path().join("t/l")).unwrap(),
            Path::new("/etc/passwd")
        );
    }
}
