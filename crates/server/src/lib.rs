//! Ballast's front-ends, each a thin adapter over `VolumeService`: the REST
//! API (this issue), and later the Docker volume plugin, CSI and metrics.
//! Adapters translate protocol types into one core call and map the core's
//! error exhaustively; they hold no volume logic.

pub mod api;
pub mod backups;
pub mod csi;
pub mod dashboard;
pub mod docker;
pub mod h2_authority;
pub mod listen;
pub mod metrics;
pub mod openapi;
pub mod rest;
pub mod wire;

use std::sync::Arc;

use ballast_core::VolumeService;

/// Run a blocking core call on the blocking pool. A panic inside becomes a
/// store-less internal error rather than a dropped connection.
pub async fn run_blocking<T, F>(svc: &Arc<VolumeService>, f: F) -> ballast_core::Result<T>
where
    F: FnOnce(&VolumeService) -> ballast_core::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let svc = svc.clone();
    match tokio::task::spawn_blocking(move || f(&svc)).await {
        Ok(r) => r,
        Err(e) => Err(ballast_core::Error::Internal(format!(
            "operation panicked: {e}"
        ))),
    }
}
