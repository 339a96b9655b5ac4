//! Directory trees (btrfs subvolumes, dir volumes) as manifests: each
//! regular file cut into the same content-addressed chunks as images, so a
//! file that did not change costs nothing the next time.
//!
//! Kept: regular files, directories, symlinks, their mode, owner and
//! modification time. Not kept: hard links (each name is a file of its
//! own), extended attributes, device nodes, sockets and fifos (skipped).

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ballast_core::progress::Progress;
use ballast_core::DriverError;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::CHUNK_SIZE;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TreeEntry {
    /// Relative to the volume's root, `/`-separated.
    pub path: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: i64,
    #[serde(flatten)]
    pub kind: EntryKind,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum EntryKind {
    Dir,
    File {
        size: u64,
        chunks: Vec<Option<String>>,
    },
    Symlink {
        target: String,
    },
}

impl TreeEntry {
    pub fn size(&self) -> u64 {
        match &self.kind {
            EntryKind::File { size, .. } => *size,
            _ => 0,
        }
    }

    pub fn chunks(&self) -> &[Option<String>] {
        match &self.kind {
            EntryKind::File { chunks, .. } => chunks,
            _ => &[],
        }
    }
}

fn io(p: &Path, e: std::io::Error) -> DriverError {
    DriverError::io(p, e)
}

fn rel(root: &Path, p: &Path) -> Result<String, DriverError> {
    let r = p.strip_prefix(root).expect("under the root");
    r.to_str().map(str::to_string).ok_or_else(|| {
        DriverError::Unsupported(format!(
            "{}: a file name that is not UTF-8 cannot be backed up",
            p.display()
        ))
    })
}

/// Every entry under `root`, parents before children, in name order.
pub(crate) fn scan(root: &Path) -> Result<Vec<TreeEntry>, DriverError> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut names: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(|e| io(&dir, e))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(|e| io(&dir, e))?;
        names.sort();
        let mut subdirs = Vec::new();
        for p in names {
            let md = fs::symlink_metadata(&p).map_err(|e| io(&p, e))?;
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                subdirs.push(p.clone());
                EntryKind::Dir
            } else if ft.is_file() {
                EntryKind::File {
                    size: md.len(),
                    chunks: Vec::new(),
                }
            } else if ft.is_symlink() {
                let t = fs::read_link(&p).map_err(|e| io(&p, e))?;
                EntryKind::Symlink {
                    target: t
                        .to_str()
                        .ok_or_else(|| {
                            DriverError::Unsupported(format!(
                                "{}: a link target that is not UTF-8",
                                p.display()
                            ))
                        })?
                        .to_string(),
                }
            } else {
                tracing::debug!(path = %p.display(), "not a file, directory or link: skipped");
                continue;
            };
            out.push(TreeEntry {
                path: rel(root, &p)?,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                mtime: md.mtime(),
                mtime_nsec: md.mtime_nsec(),
                kind,
            });
        }
        // Depth first, in name order: push in reverse.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(out)
}

/// Read every file of `entries` in chunks: `each(Some(hash), bytes)` for a
/// chunk with data, `each(None, zeros)` for one of zeros. Returns the
/// entries with their chunk lists.
pub(crate) fn chunk_files(
    root: &Path,
    mut entries: Vec<TreeEntry>,
    mut each: impl FnMut(Option<&str>, Vec<u8>) -> Result<(), DriverError>,
) -> Result<Vec<TreeEntry>, DriverError> {
    for e in &mut entries {
        let EntryKind::File { size, chunks } = &mut e.kind else {
            continue;
        };
        let p = root.join(&e.path);
        let f = File::open(&p).map_err(|err| io(&p, err))?;
        let mut off = 0;
        while off < *size {
            let len = crate::chunk_len(*size - off);
            let mut buf = vec![0u8; len];
            let mut got = 0;
            while got < len {
                let n = f
                    .read_at(&mut buf[got..], off + got as u64)
                    .map_err(|err| io(&p, err))?;
                if n == 0 {
                    break; // shrank meanwhile: the snapshot should not
                }
                got += n;
            }
            if buf.iter().all(|b| *b == 0) {
                chunks.push(None);
                each(None, buf)?;
            } else {
                let h = blake3::hash(&buf).to_hex().to_string();
                each(Some(&h), buf)?;
                chunks.push(Some(h));
            }
            off += len as u64;
        }
    }
    Ok(entries)
}

/// Make the tree of `entries` under `root` (an empty volume).
pub(crate) fn restore(
    root: &Path,
    entries: &[TreeEntry],
    mut fetch: impl FnMut(&str) -> Result<Bytes, DriverError>,
    progress: &Progress,
) -> Result<(), DriverError> {
    use nix::fcntl::AtFlags;
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    use nix::unistd::{fchownat, Gid, Uid};
    for e in entries {
        if e.path.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(DriverError::Corrupt(format!(
                "the manifest names a path outside the volume: {:?}",
                e.path
            )));
        }
        let p = root.join(&e.path);
        match &e.kind {
            EntryKind::Dir => match fs::create_dir(&p) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(io(&p, err)),
            },
            EntryKind::File { size, chunks } => {
                let f = File::create(&p).map_err(|err| io(&p, err))?;
                f.set_len(*size).map_err(|err| io(&p, err))?;
                for (i, c) in chunks.iter().enumerate() {
                    let off = i as u64 * CHUNK_SIZE;
                    let len = CHUNK_SIZE.min(size - off);
                    if let Some(h) = c {
                        let data = fetch(h)?;
                        f.write_all_at(&data, off).map_err(|err| io(&p, err))?;
                    }
                    progress.advance(len);
                }
                f.sync_all().map_err(|err| io(&p, err))?;
            }
            EntryKind::Symlink { target } => {
                std::os::unix::fs::symlink(target, &p).map_err(|err| io(&p, err))?;
            }
        }
        fchownat(
            None,
            &p,
            Some(Uid::from_raw(e.uid)),
            Some(Gid::from_raw(e.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|err| io(&p, err.into()))?;
        if !matches!(e.kind, EntryKind::Symlink { .. }) {
            fs::set_permissions(&p, fs::Permissions::from_mode(e.mode))
                .map_err(|err| io(&p, err))?;
        }
    }
    // Times last, children before parents: making a child touches its
    // directory's.
    for e in entries.iter().rev() {
        let p = root.join(&e.path);
        let t = TimeSpec::new(e.mtime, e.mtime_nsec);
        utimensat(None, &p, &t, &t, UtimensatFlags::NoFollowSymlink)
            .map_err(|err| io(&p, err.into()))?;
    }
    Ok(())
}
