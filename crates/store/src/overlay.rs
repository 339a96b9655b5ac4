//! A redb storage backend that reads a file but never writes it.
//!
//! Opening a file with redb writes to it at once (the header's
//! recovery flag, and a repair after an unclean shutdown). Before the store
//! knows a file is a ballast store of a schema it understands, it must not
//! change a byte, so it first opens the file through this backend: reads come
//! from the file, opened read-only, and writes land in memory, to be thrown
//! away. The file is locked as redb locks it, so a process holding the store
//! open is detected here too.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::sync::Mutex;

use redb::backends::FileBackend;
use redb::{DatabaseError, StorageBackend};

/// The size of the blocks the in-memory overlay keeps.
const BLOCK_LEN: usize = 4096;
const BLOCK: u64 = BLOCK_LEN as u64;

/// Reads from a file, keeps every write in memory.
#[derive(Debug)]
pub(crate) struct ReadOnlyOverlay {
    base: FileBackend,
    state: Mutex<Overlay>,
}

#[derive(Debug)]
struct Overlay {
    /// The length the database sees.
    len: u64,
    /// Bytes of the file below this offset are visible where no block
    /// overrides them; above it the storage reads as zeros (after a shrink).
    base_visible: u64,
    /// Written blocks, keyed by block index; each is `BLOCK` bytes long.
    blocks: BTreeMap<u64, Vec<u8>>,
}

impl ReadOnlyOverlay {
    /// Lock `file` (opened read-only) as redb would and wrap it.
    pub(crate) fn new(file: File) -> Result<Self, DatabaseError> {
        let len = file.metadata()?.len();
        Ok(Self {
            base: FileBackend::new(file)?,
            state: Mutex::new(Overlay {
                len,
                base_visible: len,
                blocks: BTreeMap::new(),
            }),
        })
    }

    /// Fill `out` with the bytes of block `index` starting at `within`.
    fn read_block(&self, st: &Overlay, index: u64, within: u64, out: &mut [u8]) -> io::Result<()> {
        if let Some(block) = st.blocks.get(&index) {
            let start = usize::try_from(within).map_err(io::Error::other)?;
            out.copy_from_slice(&block[start..start + out.len()]);
            return Ok(());
        }
        let offset = index * BLOCK + within;
        let from_base = st.base_visible.saturating_sub(offset).min(out.len() as u64);
        // `from_base` is at most `out.len()`, so it fits in a usize.
        let from_base = usize::try_from(from_base).map_err(io::Error::other)?;
        if from_base > 0 {
            let bytes = self.base.read(offset, from_base)?;
            out[..from_base].copy_from_slice(&bytes);
        }
        out[from_base..].fill(0);
        Ok(())
    }
}

fn lock(state: &Mutex<Overlay>) -> io::Result<std::sync::MutexGuard<'_, Overlay>> {
    state
        .lock()
        .map_err(|_| io::Error::other("read-only overlay lock poisoned"))
}

/// Visit the blocks covering `offset..offset + len` as
/// `(block index, offset within block, range within the caller's buffer)`.
fn for_each_block(
    offset: u64,
    len: usize,
    mut f: impl FnMut(u64, u64, std::ops::Range<usize>) -> io::Result<()>,
) -> io::Result<()> {
    let mut done = 0usize;
    while done < len {
        let pos = offset + done as u64;
        let within = pos % BLOCK;
        let room = BLOCK - within;
        let take = usize::try_from(room)
            .map_err(io::Error::other)?
            .min(len - done);
        f(pos / BLOCK, within, done..done + take)?;
        done += take;
    }
    Ok(())
}

impl StorageBackend for ReadOnlyOverlay {
    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.state)?.len)
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let st = lock(&self.state)?;
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > st.len)
        {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {len} bytes at {offset} past the end ({} bytes)",
                    st.len
                ),
            ));
        }
        let mut out = vec![0; len];
        for_each_block(offset, len, |index, within, range| {
            self.read_block(&st, index, within, &mut out[range])
        })?;
        Ok(out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = lock(&self.state)?;
        if len < st.len {
            st.base_visible = st.base_visible.min(len);
            let first_gone = len.div_ceil(BLOCK);
            st.blocks.split_off(&first_gone);
            let within = len % BLOCK;
            if within != 0 {
                if let Some(block) = st.blocks.get_mut(&(len / BLOCK)) {
                    let start = usize::try_from(within).map_err(io::Error::other)?;
                    block[start..].fill(0);
                }
            }
        }
        st.len = len;
        Ok(())
    }

    fn sync_data(&self, _eventual: bool) -> io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut st = lock(&self.state)?;
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| io::Error::other("write past the largest offset"))?;
        for_each_block(offset, data.len(), |index, within, range| {
            if !st.blocks.contains_key(&index) {
                let mut block = vec![0; BLOCK_LEN];
                self.read_block(&st, index, 0, &mut block)?;
                st.blocks.insert(index, block);
            }
            let start = usize::try_from(within).map_err(io::Error::other)?;
            let block = st
                .blocks
                .get_mut(&index)
                .ok_or_else(|| io::Error::other("overlay block vanished"))?;
            block[start..start + range.len()].copy_from_slice(&data[range]);
            Ok(())
        })?;
        st.len = st.len.max(end);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay_on(bytes: &[u8]) -> (tempfile::NamedTempFile, ReadOnlyOverlay) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), bytes).unwrap();
        let ro = File::open(file.path()).unwrap();
        let overlay = ReadOnlyOverlay::new(ro).unwrap();
        (file, overlay)
    }

    #[test]
    fn reads_through_and_keeps_writes_in_memory() {
        let base: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let (file, o) = overlay_on(&base);
        assert_eq!(o.read(4000, 200).unwrap(), base[4000..4200]);
        o.write(4090, &[0xAA; 20]).unwrap();
        let mut expect = base.clone();
        expect[4090..4110].fill(0xAA);
        assert_eq!(o.read(0, 10_000).unwrap(), expect);
        // Grow, write past the old end.
        o.write(12_000, &[1, 2, 3]).unwrap();
        assert_eq!(o.len().unwrap(), 12_003);
        expect.resize(12_003, 0);
        expect[12_000..].copy_from_slice(&[1, 2, 3]);
        assert_eq!(o.read(0, 12_003).unwrap(), expect);
        // Shrink then grow: the cut-off part reads as zeros.
        o.set_len(5000).unwrap();
        o.set_len(9000).unwrap();
        expect.truncate(5000);
        expect.resize(9000, 0);
        assert_eq!(o.read(0, 9000).unwrap(), expect);
        assert!(o.read(8999, 2).is_err());
        assert_eq!(std::fs::read(file.path()).unwrap(), base);
    }
}
