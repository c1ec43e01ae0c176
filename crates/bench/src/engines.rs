//! Calls each engine of a cluster served around a phase, as the engine itself counts them: PostgreSQL's
//! transactions in the cluster's database (`pg_stat_database`: commits and rollbacks, the payment
//! service's included — its ledger lives there too), and Redis's script calls and commands (`INFO
//! commandstats`: the commands run inside scripts included). Divided by a phase's accepted orders they
//! are the round trips an order costs each engine. PostgreSQL publishes a busy backend's counts about
//! once a second, so a phase's figure may be off by about a second's worth; the broker's counts need
//! its management plugin, which this machine's RabbitMQ does not run, so it has none.

use std::collections::BTreeMap;

use anyhow::Context;

pub struct Engines {
    postgres: sqlx::PgPool,
    redis: redis::aio::MultiplexedConnection,
}

/// Counts by name, as read at one moment.
pub type Counts = BTreeMap<String, u64>;

impl Engines {
    pub async fn connect(postgres_url: &str, redis_url: &str) -> anyhow::Result<Engines> {
        let postgres = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(postgres_url)
            .await
            .context("connecting to the cluster's PostgreSQL to count its transactions")?;
        let redis = redis::Client::open(redis_url)
            .context("the cluster's Redis URL")?
            .get_multiplexed_async_connection()
            .await
            .context("connecting to the cluster's Redis to count its calls")?;
        Ok(Engines { postgres, redis })
    }

    pub async fn read(&self) -> anyhow::Result<Counts> {
        let transactions: i64 = sqlx::query_scalar(
            "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&self.postgres)
        .await
        .context("reading pg_stat_database")?;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.redis.clone())
            .await
            .context("reading Redis's commandstats")?;
        let (scripts, commands) = redis_calls(&info);
        let mut counts = Counts::new();
        counts.insert("postgresql transactions".into(), u64::try_from(transactions).unwrap_or(0));
        counts.insert("redis script calls".into(), scripts);
        counts.insert("redis commands".into(), commands);
        Ok(counts)
    }
}

/// (script calls, all commands) from `INFO commandstats` lines such as
/// `cmdstat_evalsha:calls=153633,usec=2231527,…`.
fn redis_calls(info: &str) -> (u64, u64) {
    let (mut scripts, mut commands) = (0, 0);
    for line in info.lines() {
        let Some((name, stats)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else { continue };
        let calls = stats
            .split(',')
            .find_map(|field| field.strip_prefix("calls="))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        if matches!(name, "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro") {
            scripts += calls;
        }
        if !name.starts_with("info") && !name.starts_with("config") {
            commands += calls;
        }
    }
    (scripts, commands)
}

/// What changed between two readings, by name.
pub fn spent(before: &Counts, after: &Counts) -> Counts {
    after.iter().map(|(name, n)| (name.clone(), n.saturating_sub(before.get(name).copied().unwrap_or(0)))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_are_summed_into_script_calls_and_commands() {
        let info = "# Commandstats\r\ncmdstat_evalsha:calls=10,usec=145,usec_per_call=14.5,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_hget:calls=30,usec=40,usec_per_call=1.3,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_info:calls=2,usec=9,usec_per_call=4.5,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_eval:calls=1,usec=20,usec_per_call=20.0,rejected_calls=0,failed_calls=0\r\n";
        assert_eq!(redis_calls(info), (11, 41), "the bench's own INFO calls are not the flow's");
    }

    #[test]
    fn spent_is_the_difference_of_two_readings() {
        let before = Counts::from([("a".to_owned(), 5), ("b".to_owned(), 1)]);
        let after = Counts::from([("a".to_owned(), 12), ("b".to_owned(), 1)]);
        assert_eq!(spent(&before, &after), Counts::from([("a".to_owned(), 7), ("b".to_owned(), 0)]));
    }
}
