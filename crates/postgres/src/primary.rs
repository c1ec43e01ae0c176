//! [`Primary`]: pools that follow a PostgreSQL primary that can move — Patroni promotes the synchronous
//! standby when the primary fails. Whoever knows where the primary is now (the cluster profile reads
//! Patroni's leader key in etcd) calls [`Primary::moved_to`]; from then on every pool registered here
//! opens its connections there, gives out none opened before the move, and never keeps a connection to a
//! server in recovery (a standby, or a former primary not rewound yet). Work cut off by the failover
//! fails with a retryable error; the flow's retries are idempotent, so a commit in doubt is settled by
//! doing it again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};

#[derive(Debug)]
pub struct Primary {
    started: Instant,
    /// Milliseconds after `started` of the last move (0: never moved).
    moved_ms: AtomicU64,
    /// Where the last move said the primary is (`None`: never moved; the pools' own options hold).
    target: Mutex<Option<(String, u16)>>,
    pools: Mutex<Vec<(PgPool, PgConnectOptions)>>,
}

impl Primary {
    pub fn new() -> Arc<Primary> {
        Arc::new(Primary {
            started: Instant::now(),
            moved_ms: AtomicU64::new(0),
            target: Mutex::default(),
            pools: Mutex::default(),
        })
    }

    /// Options for a pool that follows: a new connection to a server in recovery, or (after a move) to
    /// another port than the primary's, is refused (the pool opens another); an idle one opened before
    /// the last move is closed instead of given out.
    pub fn pool_options(self: &Arc<Self>) -> PgPoolOptions {
        let primary = Arc::clone(self);
        let checking = Arc::clone(self);
        PgPoolOptions::new()
            .after_connect(move |connection, _| {
                let expected = checking.target.lock().unwrap_or_else(PoisonError::into_inner).clone();
                Box::pin(async move {
                    let row = sqlx::query("SELECT pg_is_in_recovery(), inet_server_port()")
                        .fetch_one(&mut *connection)
                        .await?;
                    if row.try_get::<bool, _>(0)? {
                        return Err(sqlx::Error::Protocol("connected to a standby, not the primary".into()));
                    }
                    // Opened with the options of before a move (a connect under way while it happened).
                    if let Some((_, port)) = expected
                        && row.try_get::<Option<i32>, _>(1)?.is_some_and(|at| at != i32::from(port))
                    {
                        return Err(sqlx::Error::Protocol("connected to a former primary".into()));
                    }
                    Ok(())
                })
            })
            .before_acquire(move |_, meta| {
                let opened_ms =
                    primary.now_ms().saturating_sub(u64::try_from(meta.age.as_millis()).unwrap_or(u64::MAX));
                // Strictly after: one opened in the move's millisecond may predate it.
                let moved_ms = primary.moved_ms.load(Ordering::Acquire);
                let current = moved_ms == 0 || opened_ms > moved_ms;
                Box::pin(async move { Ok(current) })
            })
    }

    /// Registers a pool made with [`Primary::pool_options`] and connected with `options`: its host and
    /// port follow every move, including one made while the pool was connecting.
    pub fn follow(&self, pool: &PgPool, options: PgConnectOptions) {
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((host, port)) = &*self.target.lock().unwrap_or_else(PoisonError::into_inner) {
            pool.set_connect_options(options.clone().host(host).port(*port));
        }
        pools.push((pool.clone(), options));
    }

    /// The primary is now at `host:port`.
    pub fn moved_to(&self, host: &str, port: u16) {
        let pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        *self.target.lock().unwrap_or_else(PoisonError::into_inner) = Some((host.to_owned(), port));
        for (pool, options) in pools.iter() {
            pool.set_connect_options(options.clone().host(host).port(port));
        }
        // After the options: a connection opened from now on is to the new primary (or refused).
        self.moved_ms.store(self.now_ms().max(1), Ordering::Release);
        tracing::warn!(host, port, pools = pools.len(), "PostgreSQL primary moved; connections follow it");
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}
