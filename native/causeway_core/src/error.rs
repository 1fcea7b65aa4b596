//! The one error type of the core. It crosses the NIF boundary as
//! `{:error, {kind_atom, message}}` (see `Error::kind`).

use thiserror::Error;

/// Everything that can go wrong in the core.
#[derive(Debug, Error)]
pub enum Error {
    #[error("storage error: {0}")]
    Storage(#[from] rocksdb::Error),
    #[error("encode error: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("decode error: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{path}: {reason}")]
    Path { path: String, reason: String },
    #[error("incompatible store at {path}: {reason}")]
    Incompatible { path: String, reason: String },
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("the Causeway pipeline is closed")]
    Closed,
    #[error("busy: {0}")]
    Busy(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("read-only store: {0}")]
    ReadOnly(String),
    /// The store failed and is not back yet (a full disk, a failed reopen):
    /// kind `storage`, like the RocksDB error that started it.
    #[error("storage is failing: {0}")]
    StorageDown(String),
}

impl Error {
    /// The short name Elixir matches on (`{:error, {kind, message}}`).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Storage(_) => "storage",
            Error::Encode(_) => "encode",
            Error::Decode(_) => "decode",
            Error::Io(_) => "io",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::Path { .. } => "path",
            Error::Incompatible { .. } => "incompatible",
            Error::Corrupt(_) => "corrupt",
            Error::Closed => "closed",
            Error::Busy(_) => "busy",
            Error::NotFound(_) => "not_found",
            Error::ReadOnly(_) => "read_only",
            Error::StorageDown(_) => "storage",
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
