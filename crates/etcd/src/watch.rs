//! [`Watch`] on an etcd watch stream.
//!
//! A task on the store's runtime reads the stream and hands batches to the
//! reader through a channel, so the reader's `recv_timeout` is a plain
//! blocking wait. When the stream breaks (etcd restarted, the connection
//! cut, a keepalive ping unanswered) the task tells the reader once with
//! [`StoreError::Unavailable`] and reopens the watch from the first revision
//! it has not delivered, so the reader, polling on, gets every change once
//! and in order. It gives up only when that revision has been compacted
//! meanwhile ([`StoreError::Compacted`]): then the reader must read afresh.
//!
//! Resuming after the last delivered revision is exact because etcd never
//! splits one revision's events across two watch responses.

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use ballast_core::store::{StoreError, Watch, WatchEvent};
use etcd_client::{EventType, GetOptions, WatchOptions, WatchStream};
use tokio::runtime::Handle;
use tokio::task::AbortHandle;

use crate::{from_etcd_rev, is_compacted, RuntimeGuard, Shared};

type Batch = Result<Vec<WatchEvent>, StoreError>;

/// The first wait before reopening a broken watch; it doubles up to the
/// store's deadline.
const FIRST_PAUSE: Duration = Duration::from_millis(100);

/// Open an etcd watch of `key`'s prefix from revision `after + 1`, and make
/// sure that revision is not compacted (etcd tells a watch so only some
/// time after creating it, so ask directly).
pub(crate) async fn open(
    s: Arc<Shared>,
    key: Vec<u8>,
    after: u64,
) -> Result<WatchStream, StoreError> {
    let start = crate::to_etcd_rev(after.saturating_add(1));
    let mut stream = open_stream(&s, &key, start).await?;
    let mut kv = s.kv();
    let probe = GetOptions::new()
        .with_prefix()
        .with_count_only()
        .with_revision(start);
    match kv.get(key, Some(probe)).await {
        Ok(_) => Ok(stream),
        Err(e) if is_compacted(&e) => {
            // The watch is cancelled with the compaction revision shortly
            // (the caller's deadline bounds the wait).
            loop {
                match stream.message().await {
                    Ok(Some(resp)) if resp.compact_revision() > 0 => {
                        return Err(StoreError::Compacted {
                            requested: after,
                            compact_revision: from_etcd_rev(resp.compact_revision()),
                        })
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => {
                        return Err(StoreError::Compacted {
                            requested: after,
                            compact_revision: after.saturating_add(1),
                        })
                    }
                }
            }
        }
        // A start in the future is fine: those changes have not happened yet.
        Err(e) if is_future_revision(&e) => Ok(stream),
        Err(e) => Err(s.error("opening a watch", e)),
    }
}

/// etcd's `ErrGRPCFutureRev` ("mvcc: required revision is a future revision").
fn is_future_revision(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.code() == tonic::Code::OutOfRange && s.message().contains("future revision"))
}

/// Create the etcd watch and wait for etcd to confirm it.
async fn open_stream(s: &Shared, key: &[u8], start: i64) -> Result<WatchStream, StoreError> {
    let mut client = s.client().watch_client();
    let options = WatchOptions::new().with_prefix().with_start_revision(start);
    let mut stream = client
        .watch(key.to_vec(), Some(options))
        .await
        .map_err(|e| s.error("opening a watch", e))?;
    match stream.message().await {
        Ok(Some(resp)) if resp.compact_revision() > 0 => Err(StoreError::Compacted {
            requested: from_etcd_rev(start).saturating_sub(1),
            compact_revision: from_etcd_rev(resp.compact_revision()),
        }),
        Ok(Some(resp)) if resp.created() && !resp.canceled() => Ok(stream),
        Ok(Some(resp)) => Err(StoreError::Io(format!(
            "etcd at {}: watch refused: {}",
            s.at,
            resp.cancel_reason()
        ))),
        Ok(None) => Err(StoreError::Unavailable(format!(
            "etcd at {} closed the watch before confirming it",
            s.at
        ))),
        Err(e) => Err(s.error("opening a watch", e)),
    }
}

/// The reader's end of a watch. Dropping it stops the task.
pub(crate) struct EtcdWatch {
    rx: Receiver<Batch>,
    task: AbortHandle,
    /// The error that ended the watch, returned to every later call.
    ended: Option<StoreError>,
    /// Keeps the runtime (and so the task) alive if the store goes first.
    _runtime: Arc<RuntimeGuard>,
}

impl EtcdWatch {
    pub(crate) fn start(
        handle: &Handle,
        runtime: Arc<RuntimeGuard>,
        s: Arc<Shared>,
        key: Vec<u8>,
        stream: WatchStream,
        after: u64,
    ) -> Self {
        let (tx, rx) = channel();
        let task = handle
            .spawn(pump(s, key, stream, after.saturating_add(1), tx))
            .abort_handle();
        EtcdWatch {
            rx,
            task,
            ended: None,
            _runtime: runtime,
        }
    }
}

impl Drop for EtcdWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watch for EtcdWatch {
    fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Vec<WatchEvent>>, StoreError> {
        if let Some(e) = &self.ended {
            return Err(e.clone());
        }
        match self.rx.recv_timeout(timeout) {
            Ok(Ok(batch)) => Ok(Some(batch)),
            Ok(Err(e)) => {
                // Unavailable is a notice (the task resumes); the rest end it.
                if !e.is_retryable() {
                    self.ended = Some(e.clone());
                }
                Err(e)
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                let e = StoreError::Unavailable("etcd watch ended: its store was shut down".into());
                self.ended = Some(e.clone());
                Err(e)
            }
        }
    }
}

/// Forward the stream's events from revision `next` on, reopening it when
/// it breaks. Ends when the reader is gone or history was compacted.
async fn pump(
    s: Arc<Shared>,
    key: Vec<u8>,
    mut stream: WatchStream,
    mut next: u64,
    tx: Sender<Batch>,
) {
    loop {
        let why = loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    if resp.compact_revision() > 0 {
                        let _ = tx.send(Err(StoreError::Compacted {
                            requested: next.saturating_sub(1),
                            compact_revision: from_etcd_rev(resp.compact_revision()),
                        }));
                        return;
                    }
                    if resp.canceled() {
                        break format!("etcd cancelled it: {}", resp.cancel_reason());
                    }
                    if resp.events().is_empty() {
                        continue;
                    }
                    let batch = match events(&s, resp.events()) {
                        Ok(batch) => batch,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    if let Some(last) = batch.last() {
                        next = last.revision().saturating_add(1);
                    }
                    if tx.send(Ok(batch)).is_err() {
                        return;
                    }
                }
                Ok(None) => break "etcd ended the stream".to_string(),
                Err(etcd_client::Error::GRpcStatus(status)) => break status.message().to_string(),
                Err(e) => break e.to_string(),
            }
        };
        tracing::warn!(at = %s.at, next, "etcd watch broke ({why}); reopening");
        s.demote(s.active_index());
        let notice = StoreError::Unavailable(format!(
            "etcd at {}: watch broke ({why}); it resumes from revision {next}",
            s.at
        ));
        if tx.send(Err(notice)).is_err() {
            return;
        }
        let mut pause = FIRST_PAUSE;
        stream = loop {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(s.timeout.max(FIRST_PAUSE));
            let start = crate::to_etcd_rev(next);
            let conn = s.active_index();
            match tokio::time::timeout(s.timeout, open_stream(&s, &key, start)).await {
                Ok(Ok(stream)) => break stream,
                Ok(Err(e @ StoreError::Compacted { .. })) => {
                    let _ = tx.send(Err(e));
                    return;
                }
                // Still down there: try the next endpoint (the reader was
                // told already).
                Ok(Err(_)) | Err(_) => {
                    s.demote(conn);
                    continue;
                }
            }
        };
        tracing::info!(at = %s.at, next, "etcd watch resumed");
    }
}

fn events(s: &Shared, events: &[etcd_client::Event]) -> Result<Vec<WatchEvent>, StoreError> {
    events
        .iter()
        .map(|e| {
            let kv = e
                .kv()
                .ok_or_else(|| s.corrupt("a watch event without its key".into()))?;
            Ok(match e.event_type() {
                EventType::Put => WatchEvent::Put(s.to_kv(kv)?),
                EventType::Delete => WatchEvent::Delete {
                    key: s.strip(kv.key())?,
                    mod_revision: from_etcd_rev(kv.mod_revision()),
                },
            })
        })
        .collect()
}
