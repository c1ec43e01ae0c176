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
        // The client library's own word on whether a request may be retried: a server still loading its
        // data, busy, read-only or without a master (a failover in progress), a cluster slot that moved,
        // a dropped connection — all of it; a script error or a wrong type — not.
        let transient = error.is_io_error()
            || error.is_connection_dropped()
            || error.is_timeout()
            || error.is_connection_refusal()
            || !matches!(error.retry_method(), redis::RetryMethod::NoRetry);
        if transient { CacheError::Unavailable(error) } else { CacheError::Refused(error) }
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

#[cfg(test)]
mod tests {
    use super::CacheError;

    fn classify(kind: redis::ErrorKind, detail: &str) -> bool {
        CacheError::from(redis::RedisError::from((kind, "test", detail.to_owned()))).is_retryable()
    }

    #[test]
    fn a_failing_over_server_is_transient_a_script_error_is_not() {
        use redis::{ErrorKind, ServerErrorKind};
        for kind in [
            ServerErrorKind::BusyLoading,
            ServerErrorKind::TryAgain,
            ServerErrorKind::MasterDown,
            ServerErrorKind::ReadOnly,
            ServerErrorKind::ClusterDown,
        ] {
            assert!(classify(ErrorKind::Server(kind), "x"), "{kind:?}");
        }
        assert!(!classify(ErrorKind::Server(ServerErrorKind::ResponseError), "ERR script failed"));
        assert!(!classify(ErrorKind::UnexpectedReturnType, "x"));
    }
}
