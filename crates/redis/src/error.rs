//! What can go wrong with Redis, and how each failure reaches the ports.

use orderly_app::PortError;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The connection dropped, was refused or timed out.
    #[error("unavailable: {0}")]
    Unavailable(redis::RedisError),
    /// A command the server refused (a script error, a wrong type): it will be refused again.
    #[error("refused: {0}")]
    Refused(redis::RedisError),
    /// A script answered something its contract does not allow, or a stored value has another layout.
    #[error("bad answer: {0}")]
    BadAnswer(String),
    /// A value changed under a read-modify-write more often than it was retried.
    #[error("contended: {0}")]
    Contended(&'static str),
    #[error("unencodable value: {0}")]
    Unencodable(serde_json::Error),
}

impl CacheError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, CacheError::Unavailable(_) | CacheError::Contended(_))
    }
}

impl From<redis::RedisError> for CacheError {
    fn from(error: redis::RedisError) -> CacheError {
        if error.is_io_error() || error.is_connection_dropped() || error.is_timeout() || error.is_connection_refusal() {
            CacheError::Unavailable(error)
        } else {
            CacheError::Refused(error)
        }
    }
}

impl From<CacheError> for PortError {
    fn from(error: CacheError) -> PortError {
        match error {
            error if error.is_retryable() => PortError::unavailable("redis", error),
            error @ CacheError::BadAnswer(_) => PortError::corrupt("redis", error),
            error => PortError::failed("redis", error),
        }
    }
}
