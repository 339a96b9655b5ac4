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
    /// Another operation holds the volume (only from the non-waiting calls).
    #[error("volume {name:?} has an operation in flight; retry")]
    Conflict { name: String },
    /// A host call did not answer before its deadline (a hung filesystem,
    /// a stuck tool): the operation gave up and released its lock; a retry
    /// may succeed.
    #[error("{0}; the host did not answer in time, retry later")]
    Unavailable(DriverError),
    #[error(transparent)]
    Driver(DriverError),
    #[error(transparent)]
    Store(#[from] StoreError),
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
            Error::Unavailable(_) => "unavailable",
            Error::Driver(_) => "driver",
            Error::Store(_) => "store",
        }
    }
}

impl From<DriverError> for Error {
    fn from(e: DriverError) -> Self {
        match e {
            DriverError::Host(crate::host::HostError::TimedOut { .. }) => Error::Unavailable(e),
            e => Error::Driver(e),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
