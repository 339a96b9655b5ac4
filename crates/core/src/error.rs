//! The core's one error type. Every front-end maps it exhaustively to its own
//! protocol (HTTP status, gRPC code, Docker `Err`), with no catch-all arm.

use crate::driver::DriverError;
use crate::model::InvalidInput;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {0}")]
    InvalidArgument(#[from] InvalidInput),
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    /// The name exists with other parameters.
    #[error("{kind} {name:?} already exists with different parameters: {detail}")]
    AlreadyExists {
        kind: &'static str,
        name: String,
        detail: String,
    },
    #[error(
        "volume {name:?} is in use by {consumers} consumer(s); unmount it first or use --force"
    )]
    InUse { name: String, consumers: usize },
    #[error("{kind} {name:?} is busy: {detail}")]
    Busy {
        kind: &'static str,
        name: String,
        detail: String,
    },
    #[error("pool {pool:?} cannot hold {requested} more bytes: {available} bytes available")]
    Capacity {
        pool: String,
        requested: u64,
        available: u64,
    },
    /// A node-side operation on something whose storage is on another node.
    #[error("{kind} {name:?} lives on node {node:?}; run this on that node")]
    OtherNode {
        kind: &'static str,
        name: String,
        node: String,
    },
    /// No ready node matching the placement can take the volume.
    #[error("no node can take volume {volume:?}: {reasons}")]
    Unplaceable { volume: String, reasons: String },
    /// Another node did the work and answered with this error.
    #[error("node {}: {}", .0.node, .0.message)]
    Remote(crate::desired::RemoteError),
    /// Another operation holds the volume (only from the non-waiting calls).
    #[error("volume {name:?} has an operation in flight; retry")]
    Conflict { name: String },
    /// A host call did not answer before its deadline (a hung filesystem,
    /// a stuck tool): the operation gave up and released its lock; a retry
    /// may succeed.
    #[error("{0}; retry later")]
    Unavailable(String),
    /// The backing storage ran out of space (ENOSPC, EDQUOT) while the
    /// operation wrote to it: unlike [`Error::Capacity`], admission allowed
    /// it but the disk did not.
    #[error("{0}")]
    NoSpace(DriverError),
    #[error(transparent)]
    Driver(DriverError),
    /// A bug or a broken invariant (a panicked operation); never the
    /// caller's fault.
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Store(StoreError),
}

impl Error {
    pub fn not_found(kind: &'static str, name: &str) -> Self {
        Error::NotFound {
            kind,
            name: name.to_string(),
        }
    }
    /// A short stable code for APIs and JSON output.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "invalid_argument",
            Error::NotFound { .. } => "not_found",
            Error::AlreadyExists { .. } => "already_exists",
            Error::InUse { .. } => "in_use",
            Error::Busy { .. } => "busy",
            Error::Capacity { .. } => "capacity",
            Error::Conflict { .. } => "conflict",
            Error::OtherNode { .. } => "other_node",
            Error::Unplaceable { .. } => "unplaceable",
            Error::Remote(r) => match r.class {
                crate::desired::ErrorClass::InvalidArgument => "invalid_argument",
                crate::desired::ErrorClass::NotFound => "not_found",
                crate::desired::ErrorClass::AlreadyExists => "already_exists",
                crate::desired::ErrorClass::FailedPrecondition => "failed_precondition",
                crate::desired::ErrorClass::Capacity => "capacity",
                crate::desired::ErrorClass::Unavailable => "unavailable",
                crate::desired::ErrorClass::Failed => "failed",
            },
            Error::Unavailable(_) => "unavailable",
            Error::NoSpace(_) => "no_space",
            Error::Driver(_) => "driver",
            Error::Internal(_) => "internal",
            Error::Store(_) => "store",
        }
    }
}

impl From<DriverError> for Error {
    fn from(e: DriverError) -> Self {
        if e.is_unavailable() {
            Error::Unavailable(match &e {
                DriverError::Host(crate::host::HostError::TimedOut { .. })
                | DriverError::Timeout(_) => format!("{e}; the host did not answer in time"),
                _ => e.to_string(),
            })
        } else if e.is_no_space() {
            Error::NoSpace(e)
        } else {
            Error::Driver(e)
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            // etcd stopped or cut off: the same call may work later, and
            // every surface says so (503 / UNAVAILABLE).
            StoreError::Unavailable(why) => Error::Unavailable(why),
            // Another node wrote the record since we read it; the key names
            // what changed.
            StoreError::Conflict { key } => Error::Conflict { name: key },
            e => Error::Store(e),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HostError;
    use std::io;
    use std::path::Path;

    fn os(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn driver_errors_are_classified_by_errno() {
        let p = Path::new("/pool/x.img");
        assert!(matches!(
            DriverError::io(p, os(libc::ENOENT)),
            DriverError::NotFound(_)
        ));
        assert!(matches!(
            DriverError::io(p, os(libc::EDQUOT)),
            DriverError::NoSpace(_)
        ));
        assert!(matches!(
            DriverError::io(p, os(libc::EBUSY)),
            DriverError::Busy(_)
        ));
        assert!(matches!(
            DriverError::io(p, os(libc::EIO)),
            DriverError::Io { .. }
        ));
        assert!(matches!(
            HostError::io("mount", &os(libc::ENOSPC)),
            HostError::NoSpace { .. }
        ));
        assert!(matches!(
            HostError::os("attach", libc::EEXIST, "exists"),
            HostError::AlreadyExists { .. }
        ));
    }

    #[test]
    fn each_kind_reaches_its_core_error() {
        let p = Path::new("/pool/x.img");
        assert!(matches!(
            Error::from(DriverError::io(p, os(libc::ENOSPC))),
            Error::NoSpace(_)
        ));
        let timed = Error::from(DriverError::Host(HostError::TimedOut {
            op: "statvfs".into(),
            secs: 10,
        }));
        assert!(
            matches!(&timed, Error::Unavailable(m) if m.contains("did not answer in time")),
            "{timed}"
        );
        assert!(matches!(
            Error::from(DriverError::Unavailable("mon down".into())),
            Error::Unavailable(_)
        ));
        assert!(matches!(
            Error::from(DriverError::io(p, os(libc::EIO))),
            Error::Driver(_)
        ));
    }
}
