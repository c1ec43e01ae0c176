//! Calls each engine of a cluster served around a phase, as the engine itself counts them: PostgreSQL's
//! transactions in the cluster's database (`pg_stat_database`: commits and rollbacks, the payment
//! service's included — its ledger lives there too), Redis's script calls and commands (`INFO
//! commandstats`: the commands run inside scripts included, the scripts' own `INFO replication` too), and
//! the packets RabbitMQ received and sent on its connections (`rabbitmqctl list_connections`: the
//! socket's own counts, which need no management plugin). Divided by a phase's accepted orders they are
//! the round trips an order costs each engine. PostgreSQL publishes a busy backend's counts about once a
//! second, so a phase's figure may be off by about a second's worth; a broker connection closed during a
//! phase takes its counts with it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;

pub struct Engines {
    postgres: sqlx::PgPool,
    redis: redis::aio::MultiplexedConnection,
    /// The `INFO` calls this bench sent to Redis before the one in flight: a reading counts those, not
    /// itself, and they are not the flow's.
    own_info_calls: AtomicU64,
    /// Whether to ask the local RabbitMQ node for its connections' packets (a cluster on RabbitMQ).
    broker: bool,
}

/// Counters kept per part (a broker connection, say) are named `"<counter> @ <part>"`: [`spent`] takes
/// each part's difference and sums the parts into `<counter>`, so a part that comes or goes during a
/// phase counts what it did within it.
const PART: &str = " @ ";

/// How long `rabbitmqctl` may take (it starts an Erlang node: about half a second here).
const RABBITMQCTL_TIMEOUT: Duration = Duration::from_secs(15);

/// Counts by name, as read at one moment.
pub type Counts = BTreeMap<String, u64>;

impl Engines {
    /// `broker`: the cluster's bus is the RabbitMQ of this machine.
    pub async fn connect(postgres_url: &str, redis_url: &str, broker: bool) -> anyhow::Result<Engines> {
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
        Ok(Engines { postgres, redis, own_info_calls: AtomicU64::new(0), broker })
    }

    pub async fn read(&self) -> anyhow::Result<Counts> {
        let transactions: i64 = sqlx::query_scalar(
            "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&self.postgres)
        .await
        .context("reading pg_stat_database")?;
        let own_info_calls = self.own_info_calls.fetch_add(1, Ordering::Relaxed);
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.redis.clone())
            .await
            .context("reading Redis's commandstats")?;
        let (scripts, commands) = redis_calls(&info);
        let mut counts = Counts::new();
        counts.insert("postgresql transactions".into(), u64::try_from(transactions).unwrap_or(0));
        counts.insert("redis script calls".into(), scripts);
        counts.insert("redis commands".into(), commands.saturating_sub(own_info_calls));
        if self.broker {
            counts.extend(broker_packets().await?);
        }
        Ok(counts)
    }
}

/// The packets each connection of the local RabbitMQ node received and sent so far, as parts of
/// "rabbitmq packets received" and "rabbitmq packets sent".
async fn broker_packets() -> anyhow::Result<Counts> {
    let mut command = tokio::process::Command::new("rabbitmqctl");
    command.args(["-q", "--no-table-headers", "list_connections", "name", "recv_cnt", "send_cnt"]).kill_on_drop(true);
    let output = tokio::time::timeout(RABBITMQCTL_TIMEOUT, command.output())
        .await
        .context("rabbitmqctl list_connections did not answer")?
        .context("running rabbitmqctl list_connections to count the broker's packets")?;
    anyhow::ensure!(
        output.status.success(),
        "rabbitmqctl list_connections: {} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(connection_packets(&String::from_utf8_lossy(&output.stdout)))
}

/// Parts of the two broker counters from `rabbitmqctl list_connections name recv_cnt send_cnt` lines
/// (tab-separated; a name holds spaces, never a tab).
fn connection_packets(listing: &str) -> Counts {
    let mut counts = Counts::new();
    for line in listing.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [name, received, sent] = fields[..] else { continue };
        let (Ok(received), Ok(sent)) = (received.trim().parse::<u64>(), sent.trim().parse::<u64>()) else { continue };
        counts.insert(format!("rabbitmq packets received{PART}{name}"), received);
        counts.insert(format!("rabbitmq packets sent{PART}{name}"), sent);
    }
    counts
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
        // `INFO` is counted: the scripts call it (the failover guard); the caller takes out its own.
        if !name.starts_with("config") {
            commands += calls;
        }
    }
    (scripts, commands)
}

/// What changed between two readings, by name; the parts of a counter (`"<counter> @ <part>"`) summed
/// into it, each part counted from its first reading (from zero if it is new).
pub fn spent(before: &Counts, after: &Counts) -> Counts {
    let mut spent = Counts::new();
    for (name, n) in after {
        let counter = name.split_once(PART).map_or(name.as_str(), |(counter, _)| counter);
        *spent.entry(counter.to_owned()).or_default() += n.saturating_sub(before.get(name).copied().unwrap_or(0));
    }
    spent
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
        assert_eq!(redis_calls(info), (11, 43), "INFO is counted: the scripts call it");
    }

    #[test]
    fn broker_connections_are_read_from_rabbitmqctl_lines() {
        let listing = "127.0.0.1:35972 -> 127.0.0.1:5672\t16655\t21230\n\
                       127.0.0.1:35988 -> 127.0.0.1:5672\t11941\t11939\n\
                       Listing connections ...\n";
        assert_eq!(
            connection_packets(listing),
            Counts::from([
                ("rabbitmq packets received @ 127.0.0.1:35972 -> 127.0.0.1:5672".to_owned(), 16655),
                ("rabbitmq packets received @ 127.0.0.1:35988 -> 127.0.0.1:5672".to_owned(), 11941),
                ("rabbitmq packets sent @ 127.0.0.1:35972 -> 127.0.0.1:5672".to_owned(), 21230),
                ("rabbitmq packets sent @ 127.0.0.1:35988 -> 127.0.0.1:5672".to_owned(), 11939),
            ])
        );
    }

    #[test]
    fn parts_are_summed_into_their_counter_each_from_its_first_reading() {
        let part = |counter: &str, connection: &str| format!("{counter}{PART}{connection}");
        let before = Counts::from([
            (part("rabbitmq packets sent", "a"), 100),
            (part("rabbitmq packets sent", "gone"), 50),
            ("redis commands".to_owned(), 7),
        ]);
        let after = Counts::from([
            (part("rabbitmq packets sent", "a"), 130),
            (part("rabbitmq packets sent", "new"), 5),
            ("redis commands".to_owned(), 9),
        ]);
        assert_eq!(
            spent(&before, &after),
            Counts::from([("rabbitmq packets sent".to_owned(), 35), ("redis commands".to_owned(), 2)]),
            "a connection that closed counts nothing; a new one counts from zero"
        );
    }

    #[test]
    fn spent_is_the_difference_of_two_readings() {
        let before = Counts::from([("a".to_owned(), 5), ("b".to_owned(), 1)]);
        let after = Counts::from([("a".to_owned(), 12), ("b".to_owned(), 1)]);
        assert_eq!(spent(&before, &after), Counts::from([("a".to_owned(), 7), ("b".to_owned(), 0)]));
    }
}
