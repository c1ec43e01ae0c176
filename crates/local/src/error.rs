//! What can go wrong in the embedded database, and how each failure reaches the ports.

use orderly_app::PortError;
use orderly_domain::CommodityId;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The storage engine failed a read, a write or a sync (a full disk, an I/O error).
    #[error("storage: {0}")]
    Storage(String),
    /// The group-commit task is gone (the database is closing).
    #[error("group commit stopped")]
    GroupCommitStopped,
    #[error("undecodable record: {0}")]
    Undecodable(String),
    #[error("unencodable record: {0}")]
    Unencodable(String),
    /// A record in a format this build cannot read: written by a later build.
    #[error("a record in format {0}, which this build does not know: the data directory was written by a later build")]
    UnknownFormat(u8),
    /// A key that does not have its keyspace's layout.
    #[error("bad {0} key")]
    BadKey(&'static str),
    /// A stock level stored for a commodity the catalog does not know.
    #[error("stock for unknown {0}")]
    StockWithoutCatalog(CommodityId),
    /// The data directory cannot be created or opened.
    #[error("{path}: {source}")]
    Directory { path: String, source: std::io::Error },
}

impl LocalError {
    /// The engine may answer the same call later; a record or a directory will not change by itself.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LocalError::Storage(_) | LocalError::GroupCommitStopped)
    }

    fn is_corrupt(&self) -> bool {
        matches!(
            self,
            LocalError::Undecodable(_)
                | LocalError::UnknownFormat(_)
                | LocalError::BadKey(_)
                | LocalError::StockWithoutCatalog(_)
        )
    }
}

impl From<LocalError> for PortError {
    fn from(error: LocalError) -> PortError {
        let what = "local store";
        if error.is_retryable() {
            PortError::unavailable(what, error)
        } else if error.is_corrupt() {
            PortError::corrupt(what, error)
        } else {
            PortError::failed(what, error)
        }
    }
}
