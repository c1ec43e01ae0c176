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
            sqlx::Error::Database(db) if db.code().is_some_and(|code| transient_sqlstate(&code)) => {
                PgError::Unavailable(error)
            }
            _ => PgError::Refused(error),
        }
    }
}

/// SQLSTATEs of a server that cannot serve the statement now but may in a moment: connection exceptions
/// (class 08), insufficient resources (53: too many connections, out of memory or disk), an operator or a
/// crash shutting it down or a server still starting (57P01–57P03), a lock or statement timeout (55P03,
/// 57014), and a read-only transaction — a standby, before a failover has found the new primary (25006).
/// The flow waits for such a server; a worker never dead-letters a message for it.
fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(code, "57P01" | "57P02" | "57P03" | "55P03" | "57014" | "25006")
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

#[cfg(test)]
mod tests {
    use super::transient_sqlstate;

    #[test]
    fn a_server_going_away_is_transient_a_refused_statement_is_not() {
        for code in ["08006", "08001", "53300", "57P01", "57P03", "55P03", "57014", "25006"] {
            assert!(transient_sqlstate(code), "{code}");
        }
        // Unique violation, check violation (the stock table's available >= 0), undefined table, syntax.
        for code in ["23505", "23514", "42P01", "42601"] {
            assert!(!transient_sqlstate(code), "{code}");
        }
    }
}
