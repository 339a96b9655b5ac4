//! Backups as content-addressed chunks on an object store.
//!
//! Layout on a target:
//! - `chunks/<h[0..2]>/<h>`: one chunk of at most [`CHUNK_SIZE`] bytes,
//!   named by its BLAKE3 hash `h`, so a chunk any backup already stored is
//!   never sent again (later backups of a volume send what changed).
//! - `manifests/<id>.json`: what the backup is of and its chunks in order,
//!   written last: a backup without its manifest does not exist, and the
//!   chunks it left are garbage for [`Engine::gc`].
//!
//! Chunks of zeros (and holes of sparse images) are not stored. A restore
//! first checks that every chunk is there (nothing is written otherwise),
//! then checks each chunk's hash as it arrives.
//!
//! The S3 client is `object_store`'s; calls run on a small tokio runtime
//! of the engine's own, each bounded by the caller's deadline.

mod tree;

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path as FsPath;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ballast_core::backups::{
    BackupEngine, BackupInfo, BackupMeta, BackupRun, BackupTarget, BlockIo, Deadline, GcStats,
    TargetLocation, VolumeData,
};
use ballast_core::progress::Progress;
use ballast_core::DriverError;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};

pub use tree::TreeEntry;

/// Chunk size: small, so that a change of 10 MiB inside a filesystem
/// (its data, and the journal, inode and superblock blocks it touches)
/// sends little more than 10 MiB; large enough that a 1 GiB volume is
/// 1024 objects.
pub const CHUNK_SIZE: u64 = CHUNK as u64;
const CHUNK: usize = 1 << 20;

/// The length of the chunk that starts `rest` bytes before the end.
pub(crate) fn chunk_len(rest: u64) -> usize {
    usize::try_from(rest.min(CHUNK_SIZE)).unwrap_or(CHUNK)
}
/// Chunks in flight at once.
const PARALLEL: usize = 16;
const MANIFEST_FORMAT: u32 = 1;

/// One backup's manifest, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    #[serde(flatten)]
    pub meta: BackupMeta,
    pub chunk_size: u64,
    pub uploaded_bytes: u64,
    pub finished_at: DateTime<Utc>,
    pub content: Content,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Content {
    /// An image's chunks in order; `None` is a chunk of zeros.
    Image {
        size_bytes: u64,
        chunks: Vec<Option<String>>,
    },
    /// A directory tree, parents before children.
    Tree { entries: Vec<TreeEntry> },
}

impl Manifest {
    fn chunk_refs(&self) -> impl Iterator<Item = &String> {
        let (image, tree): (Option<&Vec<Option<String>>>, Option<&Vec<TreeEntry>>) =
            match &self.content {
                Content::Image { chunks, .. } => (Some(chunks), None),
                Content::Tree { entries } => (None, Some(entries)),
            };
        image.into_iter().flatten().flatten().chain(
            tree.into_iter()
                .flatten()
                .flat_map(|e| e.chunks().iter().flatten()),
        )
    }

    fn data_bytes(&self) -> u64 {
        match &self.content {
            Content::Image { size_bytes, .. } => *size_bytes,
            Content::Tree { entries } => entries.iter().map(TreeEntry::size).sum(),
        }
    }

    pub fn info(&self, target: &str) -> BackupInfo {
        BackupInfo {
            meta: self.meta.clone(),
            target: target.to_string(),
            chunk_size: self.chunk_size,
            chunks: self.chunk_refs().count() as u64,
            data_bytes: self.data_bytes(),
            uploaded_bytes: self.uploaded_bytes,
            finished_at: self.finished_at,
        }
    }
}

fn chunk_path(hash: &str) -> Path {
    Path::from(format!("chunks/{}/{hash}", &hash[..2]))
}

fn manifest_path(id: &str) -> Path {
    Path::from(format!("manifests/{id}.json"))
}

/// The engine: one runtime for every target's calls.
pub struct Engine {
    /// Only None while dropping.
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Dropping a runtime waits for its tasks, which panics on an async
        // thread (the daemon's, at exit); leave them instead.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Engine {
    pub fn new() -> std::io::Result<Self> {
        // The S3 client's TLS needs a process-wide crypto provider, and the
        // build has two (ring, aws-lc): say which. Already set is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("backup-io")
            .enable_all()
            .build()?;
        Ok(Engine { rt: Some(rt) })
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("the runtime lives until the drop")
    }

    /// Run `fut` to its end or the deadline.
    fn run<T>(
        &self,
        deadline: Deadline,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, DriverError>>,
    ) -> Result<T, DriverError> {
        self.rt().block_on(async {
            tokio::time::timeout(deadline.left(), fut)
                .await
                .unwrap_or_else(|_| Err(DriverError::Timeout(format!("{what}: deadline passed"))))
        })
    }
}

/// A target opened: its store and its name for messages.
struct Repo {
    name: String,
    store: Arc<dyn ObjectStore>,
}

fn open(target: &BackupTarget) -> Result<Repo, DriverError> {
    let store: Arc<dyn ObjectStore> = match &target.location {
        TargetLocation::S3 {
            url,
            bucket,
            region,
            access_key,
            secret_key,
        } => {
            use object_store::aws::AmazonS3Builder;
            use object_store::{BackoffConfig, ClientOptions, RetryConfig};
            let mut b = AmazonS3Builder::new()
                .with_endpoint(url)
                .with_bucket_name(bucket)
                .with_region(region.as_deref().unwrap_or("us-east-1"))
                .with_virtual_hosted_style_request(false)
                // The options carry their own allow_http: set it there, or
                // they switch it off again.
                .with_client_options(
                    ClientOptions::new()
                        .with_allow_http(true)
                        .with_connect_timeout(Duration::from_secs(5))
                        .with_timeout(Duration::from_secs(60)),
                )
                // A gateway that is gone is retried a little, not for the
                // default three minutes: the run's deadline is the bound.
                .with_retry(RetryConfig {
                    backoff: BackoffConfig::default(),
                    max_retries: 3,
                    retry_timeout: Duration::from_secs(20),
                });
            match (access_key, secret_key) {
                (Some(a), Some(s)) => {
                    b = b.with_access_key_id(a).with_secret_access_key(s);
                }
                _ => b = b.with_skip_signature(true),
            }
            Arc::new(b.build().map_err(|e| store_error(&target.name, e))?)
        }
        TargetLocation::Path { dir } => {
            if !dir.is_dir() {
                return Err(DriverError::NotFound(format!(
                    "backup target {}: {} is not a directory",
                    target.name,
                    dir.display()
                )));
            }
            Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| store_error(&target.name, e))?,
            )
        }
    };
    Ok(Repo {
        name: target.name.clone(),
        store,
    })
}

/// One mapping of the store's errors: what an operator needs to act.
fn store_error(target: &str, e: object_store::Error) -> DriverError {
    use object_store::Error as E;
    match e {
        E::NotFound { path, source } => {
            DriverError::NotFound(format!("backup target {target}: {path} not found: {source}"))
        }
        E::PermissionDenied { path, source } | E::Unauthenticated { path, source } => {
            DriverError::Unavailable(format!(
                "backup target {target}: access to {path} denied (check the access key and secret key): {source}"
            ))
        }
        other => {
            let text = other.to_string();
            if text.contains("NoSuchBucket") {
                DriverError::NotFound(format!("backup target {target}: the bucket does not exist: {text}"))
            } else if text.contains("InvalidAccessKeyId")
                || text.contains("SignatureDoesNotMatch")
                || text.contains("AccessDenied")
                || text.contains("403")
            {
                DriverError::Unavailable(format!(
                    "backup target {target}: access denied (check the access key and secret key): {text}"
                ))
            } else {
                DriverError::Unavailable(format!("backup target {target}: {text}"))
            }
        }
    }
}

impl Repo {
    async fn manifest(&self, id: &str) -> Result<Manifest, DriverError> {
        let bytes = self
            .store
            .get(&manifest_path(id))
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => {
                    DriverError::NotFound(format!("backup {id} not found on target {}", self.name))
                }
                e => store_error(&self.name, e),
            })?
            .bytes()
            .await
            .map_err(|e| store_error(&self.name, e))?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            DriverError::Corrupt(format!("backup {id} on {}: bad manifest: {e}", self.name))
        })?;
        if m.format != MANIFEST_FORMAT {
            return Err(DriverError::Unsupported(format!(
                "backup {id}: manifest format {} (this ballast reads {MANIFEST_FORMAT})",
                m.format
            )));
        }
        Ok(m)
    }

    async fn manifests(&self) -> Result<Vec<Manifest>, DriverError> {
        let metas: Vec<_> = self
            .store
            .list(Some(&Path::from("manifests")))
            .try_collect()
            .await
            .map_err(|e| store_error(&self.name, e))?;
        let ids: Vec<String> = metas
            .iter()
            .filter_map(|m| {
                m.location
                    .filename()?
                    .strip_suffix(".json")
                    .map(str::to_string)
            })
            .collect();
        let mut out: Vec<Manifest> = futures::stream::iter(ids)
            .map(|id| async move { self.manifest(&id).await })
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        out.sort_by(|a, b| a.meta.id.cmp(&b.meta.id));
        Ok(out)
    }

    /// Every chunk the target holds (one listing, not a request per chunk).
    async fn chunk_names(&self) -> Result<HashSet<String>, DriverError> {
        let metas: Vec<_> = self
            .store
            .list(Some(&Path::from("chunks")))
            .try_collect()
            .await
            .map_err(|e| store_error(&self.name, e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .collect())
    }

    /// Store a chunk; the bytes sent.
    async fn put_chunk(&self, hash: String, data: Bytes) -> Result<u64, DriverError> {
        let n = data.len() as u64;
        self.store
            .put(&chunk_path(&hash), PutPayload::from(data))
            .await
            .map_err(|e| store_error(&self.name, e))?;
        Ok(n)
    }

    async fn get_chunk(&self, hash: &str) -> Result<Bytes, DriverError> {
        let data = self
            .store
            .get(&chunk_path(hash))
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => DriverError::Corrupt(format!(
                    "chunk {hash} is missing from target {}",
                    self.name
                )),
                e => store_error(&self.name, e),
            })?
            .bytes()
            .await
            .map_err(|e| store_error(&self.name, e))?;
        if blake3::hash(&data).to_hex().as_str() != hash {
            return Err(DriverError::Corrupt(format!(
                "chunk {hash} on target {} does not match its hash",
                self.name
            )));
        }
        Ok(data)
    }
}

/// Chunks going up, at most [`PARALLEL`] at once; each chunk once.
struct Uploads<'a> {
    engine: &'a Engine,
    repo: Arc<Repo>,
    deadline: Deadline,
    /// Chunks on the target when the run began, or on their way.
    known: HashSet<String>,
    inflight: VecDeque<tokio::task::JoinHandle<Result<u64, DriverError>>>,
    uploaded: u64,
    report: &'a dyn Fn(u64),
}

impl Uploads<'_> {
    fn submit(&mut self, hash: &str, data: Vec<u8>) -> Result<(), DriverError> {
        if !self.known.insert(hash.to_string()) {
            return Ok(());
        }
        if self.inflight.len() >= PARALLEL {
            self.wait_one()?;
        }
        let repo = Arc::clone(&self.repo);
        let hash = hash.to_string();
        self.inflight.push_back(
            self.engine
                .rt()
                .spawn(async move { repo.put_chunk(hash, Bytes::from(data)).await }),
        );
        Ok(())
    }

    fn wait_one(&mut self) -> Result<(), DriverError> {
        let Some(h) = self.inflight.pop_front() else {
            return Ok(());
        };
        let n = self.engine.run(self.deadline, "upload a chunk", async {
            h.await
                .unwrap_or_else(|e| Err(DriverError::Unavailable(format!("upload task: {e}"))))
        })?;
        self.uploaded += n;
        (self.report)(self.uploaded);
        Ok(())
    }

    fn finish(&mut self) -> Result<u64, DriverError> {
        while !self.inflight.is_empty() {
            self.wait_one()?;
        }
        Ok(self.uploaded)
    }
}

impl Drop for Uploads<'_> {
    fn drop(&mut self) {
        for h in &self.inflight {
            h.abort();
        }
    }
}

fn is_zero(buf: &[u8]) -> bool {
    buf.iter().all(|b| *b == 0)
}

fn io_err(what: &FsPath, e: std::io::Error) -> DriverError {
    DriverError::io(what, e)
}

/// The data extents of a sparse file, as (start, end) pairs.
fn data_ranges(f: &File, size: u64) -> Vec<(u64, u64)> {
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    let end = i64::try_from(size).unwrap_or(i64::MAX);
    while pos < end {
        let Ok(data) = lseek(fd, pos, Whence::SeekData) else {
            break; // ENXIO: no data after pos
        };
        let hole = lseek(fd, data, Whence::SeekHole).unwrap_or(end).min(end);
        out.push((data as u64, hole as u64));
        pos = hole;
    }
    out
}

impl BackupEngine for Engine {
    fn check(&self, target: &BackupTarget, deadline: Deadline) -> Result<(), DriverError> {
        let repo = open(target)?;
        self.run(deadline, "reach the backup target", async {
            let mut s = repo.store.list(Some(&Path::from("manifests")));
            match s.next().await {
                None | Some(Ok(_)) => Ok(()),
                Some(Err(e)) => Err(store_error(&repo.name, e)),
            }
        })
    }

    fn backup(
        &self,
        target: &BackupTarget,
        meta: &BackupMeta,
        data: &mut VolumeData,
        run: &BackupRun<'_>,
    ) -> Result<BackupInfo, DriverError> {
        let BackupRun {
            progress,
            uploaded,
            cancel,
            deadline,
        } = *run;
        let repo = Arc::new(open(target)?);
        // What the target holds is not sent again: chunks of earlier
        // backups (of any volume) and of runs that did not finish. The
        // service collects no garbage on a target while a run to it is in
        // flight, so none of these goes away before the manifest names it.
        let known = self.run(deadline, "list the target's chunks", repo.chunk_names())?;
        let mut up = Uploads {
            engine: self,
            repo: Arc::clone(&repo),
            deadline,
            known,
            inflight: VecDeque::new(),
            uploaded: 0,
            report: uploaded,
        };
        let stopped = || -> Result<(), DriverError> {
            if cancel.load(Ordering::Relaxed) {
                return Err(DriverError::Busy("the backup was cancelled".into()));
            }
            if deadline.passed() {
                return Err(DriverError::Timeout("the backup's deadline passed".into()));
            }
            Ok(())
        };
        let content = match data {
            VolumeData::Tree(root) => {
                let root = root.clone();
                let entries = tree::scan(&root)?;
                progress.set_total(entries.iter().map(TreeEntry::size).sum());
                let entries = tree::chunk_files(&root, entries, |hash, buf| {
                    stopped()?;
                    let n = buf.len() as u64;
                    if let Some(h) = hash {
                        up.submit(h, buf)?;
                    }
                    progress.advance(n);
                    Ok(())
                })?;
                Content::Tree { entries }
            }
            image_or_block => {
                let (file, size) = match &*image_or_block {
                    VolumeData::Image(p) => {
                        let f = File::open(p).map_err(|e| io_err(p, e))?;
                        let size = f.metadata().map_err(|e| io_err(p, e))?.len();
                        (Some(f), size)
                    }
                    VolumeData::Block(b) => (None, b.size()),
                    VolumeData::Tree(_) => unreachable!(),
                };
                progress.set_total(size);
                let ranges = file.as_ref().map(|f| data_ranges(f, size));
                let mut chunks = Vec::new();
                let mut buf = vec![0u8; CHUNK];
                let mut off = 0;
                while off < size {
                    stopped()?;
                    let len = CHUNK_SIZE.min(size - off);
                    let holds_data = ranges
                        .as_ref()
                        .is_none_or(|r| r.iter().any(|(s, e)| *s < off + len && *e > off));
                    let chunk = &mut buf[..chunk_len(len)];
                    let hash = if holds_data {
                        read_at(image_or_block, file.as_ref(), off, chunk)?;
                        if is_zero(chunk) {
                            None
                        } else {
                            let h = blake3::hash(chunk).to_hex().to_string();
                            up.submit(&h, chunk.to_vec())?;
                            Some(h)
                        }
                    } else {
                        None
                    };
                    chunks.push(hash);
                    progress.advance(len);
                    off += len;
                }
                Content::Image {
                    size_bytes: size,
                    chunks,
                }
            }
        };
        let uploaded_bytes = up.finish()?;
        stopped()?;
        // Each chunk the manifest names is there now (a listing, not a
        // request per chunk): one that went away since the run began is
        // not named by a manifest that would then be damaged.
        let held = self.run(deadline, "list the target's chunks", repo.chunk_names())?;
        let named: Vec<&Option<String>> = match &content {
            Content::Image { chunks, .. } => chunks.iter().collect(),
            Content::Tree { entries } => entries.iter().flat_map(|e| e.chunks()).collect(),
        };
        if let Some(gone) = named.into_iter().flatten().find(|h| !held.contains(*h)) {
            return Err(DriverError::Unavailable(format!(
                "chunk {gone} went away from target {} during the backup; run it again",
                repo.name
            )));
        }
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            meta: meta.clone(),
            chunk_size: CHUNK_SIZE,
            uploaded_bytes,
            finished_at: Utc::now(),
            content,
        };
        let body = serde_json::to_vec(&manifest).expect("a manifest serialises");
        self.run(deadline, "write the manifest", async {
            repo.store
                .put(&manifest_path(&meta.id), PutPayload::from(body))
                .await
                .map_err(|e| store_error(&repo.name, e))
        })?;
        Ok(manifest.info(&target.name))
    }

    fn restore(
        &self,
        target: &BackupTarget,
        id: &str,
        data: &mut VolumeData,
        progress: &Progress,
        deadline: Deadline,
    ) -> Result<BackupInfo, DriverError> {
        let repo = Arc::new(open(target)?);
        let manifest = self.run(deadline, "read the manifest", repo.manifest(id))?;
        // Every chunk there before the first byte is written.
        let refs: HashSet<String> = manifest.chunk_refs().cloned().collect();
        let held = self.run(deadline, "list the target's chunks", repo.chunk_names())?;
        let mut missing: Vec<&String> = refs.difference(&held).collect();
        if !missing.is_empty() {
            missing.sort();
            return Err(DriverError::Corrupt(format!(
                "backup {id} on target {} is damaged: {} of its chunks are missing (e.g. {})",
                repo.name,
                missing.len(),
                missing[0]
            )));
        }
        progress.set_total(manifest.data_bytes());
        // Fetches run ahead of the writes, in order.
        let fetch = |hash: String| {
            let repo = Arc::clone(&repo);
            self.rt().spawn(async move { repo.get_chunk(&hash).await })
        };
        let wait = |h: tokio::task::JoinHandle<Result<Bytes, DriverError>>| {
            self.run(deadline, "fetch a chunk", async {
                h.await
                    .unwrap_or_else(|e| Err(DriverError::Unavailable(format!("fetch task: {e}"))))
            })
        };
        match (&manifest.content, data) {
            (Content::Image { size_bytes, chunks }, data) => {
                let file = match &*data {
                    VolumeData::Image(p) => {
                        let f = std::fs::OpenOptions::new()
                            .write(true)
                            .open(p)
                            .map_err(|e| io_err(p, e))?;
                        Some((f, p.clone()))
                    }
                    VolumeData::Block(_) => None,
                    VolumeData::Tree(p) => {
                        return Err(DriverError::Unsupported(format!(
                            "backup {id} is of an image; {} is a directory volume",
                            p.display()
                        )))
                    }
                };
                let mut queue = VecDeque::new();
                let mut next = chunks.iter().enumerate();
                loop {
                    while queue.len() < PARALLEL {
                        match next.next() {
                            Some((i, Some(h))) => queue.push_back((i, Some(fetch(h.clone())))),
                            Some((i, None)) => queue.push_back((i, None)),
                            None => break,
                        }
                    }
                    let Some((i, job)) = queue.pop_front() else {
                        break;
                    };
                    let off = i as u64 * manifest.chunk_size;
                    let len = manifest.chunk_size.min(size_bytes - off);
                    if let Some(job) = job {
                        let bytes = wait(job)?;
                        match (&file, &mut *data) {
                            (Some((f, p)), _) => {
                                f.write_all_at(&bytes, off).map_err(|e| io_err(p, e))?
                            }
                            (None, VolumeData::Block(b)) => {
                                b.write_at(off, &bytes).map_err(|e| {
                                    DriverError::Unavailable(format!("write at {off}: {e}"))
                                })?
                            }
                            _ => unreachable!(),
                        }
                    }
                    progress.advance(len);
                }
                match (&file, data) {
                    (Some((f, p)), _) => f.sync_all().map_err(|e| io_err(p, e))?,
                    (None, VolumeData::Block(b)) => b
                        .flush()
                        .map_err(|e| DriverError::Unavailable(format!("flush: {e}")))?,
                    _ => {}
                }
            }
            (Content::Tree { entries }, VolumeData::Tree(root)) => {
                tree::restore(
                    root,
                    entries,
                    |hash| wait(fetch(hash.to_string())),
                    progress,
                )?;
            }
            (Content::Tree { .. }, _) => {
                return Err(DriverError::Unsupported(format!(
                    "backup {id} is of a directory tree; the new volume is not"
                )))
            }
        }
        Ok(manifest.info(&target.name))
    }

    fn get(
        &self,
        target: &BackupTarget,
        id: &str,
        deadline: Deadline,
    ) -> Result<BackupInfo, DriverError> {
        let repo = open(target)?;
        let m = self.run(deadline, "read the manifest", repo.manifest(id))?;
        Ok(m.info(&target.name))
    }

    fn list(
        &self,
        target: &BackupTarget,
        deadline: Deadline,
    ) -> Result<Vec<BackupInfo>, DriverError> {
        let repo = open(target)?;
        let ms = self.run(deadline, "list the target's backups", repo.manifests())?;
        Ok(ms.iter().map(|m| m.info(&target.name)).collect())
    }

    fn delete(
        &self,
        target: &BackupTarget,
        id: &str,
        deadline: Deadline,
    ) -> Result<(), DriverError> {
        let repo = open(target)?;
        self.run(deadline, "delete the manifest", async {
            repo.manifest(id).await?;
            repo.store
                .delete(&manifest_path(id))
                .await
                .map_err(|e| store_error(&repo.name, e))
        })
    }

    fn gc(
        &self,
        target: &BackupTarget,
        keep_since: Option<DateTime<Utc>>,
        deadline: Deadline,
    ) -> Result<GcStats, DriverError> {
        let repo = Arc::new(open(target)?);
        self.run(deadline, "collect unreferenced chunks", async {
            let referenced: HashSet<String> = repo
                .manifests()
                .await?
                .iter()
                .flat_map(|m| m.chunk_refs().cloned())
                .collect();
            let chunks: Vec<_> = repo
                .store
                .list(Some(&Path::from("chunks")))
                .try_collect()
                .await
                .map_err(|e| store_error(&repo.name, e))?;
            let mut stats = GcStats::default();
            let mut doomed = Vec::new();
            for c in chunks {
                let name = c.location.filename().unwrap_or_default().to_string();
                let young = keep_since.is_some_and(|t| c.last_modified >= t);
                if referenced.contains(&name) || young {
                    stats.chunks_kept += 1;
                } else {
                    stats.chunks_deleted += 1;
                    stats.bytes_deleted += c.size;
                    doomed.push(c.location);
                }
            }
            futures::stream::iter(doomed)
                .map(|p| {
                    let repo = Arc::clone(&repo);
                    async move {
                        match repo.store.delete(&p).await {
                            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                            Err(e) => Err(store_error(&repo.name, e)),
                        }
                    }
                })
                .buffer_unordered(PARALLEL)
                .try_collect::<Vec<()>>()
                .await?;
            Ok(stats)
        })
    }
}

/// Read a whole chunk (the tail past the end reads as zeros).
fn read_at(
    data: &mut VolumeData,
    file: Option<&File>,
    off: u64,
    buf: &mut [u8],
) -> Result<(), DriverError> {
    let mut got = 0;
    while got < buf.len() {
        let at = off + got as u64;
        let n = match file {
            Some(f) => f.read_at(&mut buf[got..], at),
            None => match data {
                VolumeData::Block(b) => b.read_at(at, &mut buf[got..]),
                _ => unreachable!("an image has its file open"),
            },
        }
        .map_err(|e| DriverError::Unavailable(format!("read at {at}: {e}")))?;
        if n == 0 {
            buf[got..].fill(0);
            break;
        }
        got += n;
    }
    Ok(())
}

/// A [`BlockIo`] over a file, for tests and benches.
pub struct FileBlock(pub File);

impl BlockIo for FileBlock {
    fn size(&self) -> u64 {
        self.0.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.sync_all()
    }
}
