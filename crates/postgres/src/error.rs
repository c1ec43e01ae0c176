//! What can go wrong with PostgreSQL, and how each failure reaches the ports.

use orderly_app::PortError;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The connection, the pool or the server is unavailable.
    #[error("unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// A serialization failure or a deadlock: the same transaction may succeed when run again.
    #[error("conflict, run again: {0}")]
    Conflict(sqlx::Error),
    /// A statement the server refused (a constraint, a type): it will be refused again.
    #[error("refused: {0}")]
    Refused(sqlx::Error),
    #[error("migrations: {0}")]
    Migration(sqlx::migrate::MigrateError),
    /// A schema name that is not a plain identifier (configuration).
    #[error("schema name {0:?} is not a plain identifier")]
    SchemaName(String),
    /// A value the schema cannot hold (beyond a bigint or a smallint).
    #[error("{0} does not fit its column")]
    OutOfRange(String),
    /// A row that does not hold what the code wrote (a negative quantity, an undecodable body).
    #[error("bad row: {0}")]
    BadRow(String),
    #[error("unencodable record: {0}")]
    Unencodable(serde_json::Error),
}

impl PgError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, PgError::Unavailable(_) | PgError::Conflict(_))
    }
}

impl From<sqlx::Error> for PgError {
    fn from(error: sqlx::Error) -> PgError {
        match &error {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
                PgError::Unavailable(error)
            }
            sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40001" | "40P01")) => {
                PgError::Conflict(error)
            }
            _ => PgError::Refused(error),
        }
    }
}

impl From<PgError> for PortError {
    fn from(error: PgError) -> PortError {
        match error {
            error if error.is_retryable() => PortError::unavailable("postgres", error),
            error @ PgError::BadRow(_) => PortError::corrupt("postgres", error),
            error => PortError::failed("postgres", error),
        }
    }
}
