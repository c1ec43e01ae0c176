//! Where the CPU goes: the processes of this machine that take part in a run, grouped by role, and the
//! CPU time each group spent during a phase (from `/proc/<pid>/stat`), so a report can say what an
//! accepted order costs each of them — the orderly processes by role, PostgreSQL, Redis, RabbitMQ, and
//! the load generator itself.
//!
//! Every process whose role is recognised is counted, whoever started it: a phase's figures include
//! anything else those servers did meanwhile (another client of the same PostgreSQL, say).

use std::collections::BTreeMap;

/// Linux reports CPU time in clock ticks of `USER_HZ`, which is 100 on every architecture it runs on
/// (the kernel's `HZ` may differ; `/proc` is scaled to `USER_HZ`).
const TICKS_PER_S: f64 = 100.0;

/// CPU ticks (user + system) per process, with its group.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    by_pid: BTreeMap<u32, (String, u64)>,
}

/// The processes of a run, now. Processes of no known role are left out; an unreadable `/proc` (another
/// OS) gives an empty snapshot, and the report then has no CPU table.
pub fn snapshot() -> Snapshot {
    let own = std::process::id();
    let mut by_pid = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Snapshot::default() };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((comm, ticks)) = parse_stat(&stat) else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&str> = cmdline
            .split(|&b| b == 0)
            .filter_map(|arg| std::str::from_utf8(arg).ok())
            .filter(|a| !a.is_empty())
            .collect();
        if let Some(group) = group_of(pid == own, comm, &args) {
            by_pid.insert(pid, (group, ticks));
        }
    }
    Snapshot { by_pid }
}

/// `comm` and utime + stime of a `/proc/<pid>/stat` line. `comm` is in parentheses and may hold spaces
/// or parentheses itself: the fields after it start after the last `)`.
fn parse_stat(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the comm: state (index 0), … utime is field 14 of the line, index 11 here; stime index 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// The role a process plays in a run, if any.
fn group_of(own: bool, comm: &str, args: &[&str]) -> Option<String> {
    if own {
        return Some("load generator".to_owned());
    }
    let program = args.first().map(|a| a.rsplit('/').next().unwrap_or(a)).unwrap_or(comm);
    match program {
        "orderly" => Some(format!("orderly {}", args.get(1).copied().unwrap_or("?"))),
        // A server this bench (or another) started from its own binary.
        "orderly-bench" => match args.get(1).copied() {
            Some("run-serve") => Some("orderly serve".to_owned()),
            Some("run-payment") => Some("orderly payment".to_owned()),
            _ => None,
        },
        _ if comm == "postgres" || program.starts_with("postgres") => Some("postgresql".to_owned()),
        _ if comm.starts_with("redis-server") => Some("redis".to_owned()),
        // RabbitMQ runs on the Erlang VM.
        _ if comm == "beam.smp" || comm.starts_with("erl_") || comm == "epmd" => Some("rabbitmq (erlang)".to_owned()),
        // The Kafka-protocol broker of scripts/kafka-up (its storage's work is PostgreSQL's).
        "tansu" => Some("kafka (tansu)".to_owned()),
        _ => None,
    }
}

/// CPU milliseconds each group spent between `before` and `after`. A process that started in between
/// counts whole; one that ended in between is lost (its time went with it).
pub fn spent_ms(before: &Snapshot, after: &Snapshot) -> BTreeMap<String, f64> {
    let mut spent: BTreeMap<String, f64> = BTreeMap::new();
    for (pid, (group, ticks)) in &after.by_pid {
        let earlier = before.by_pid.get(pid).filter(|(g, _)| g == group).map_or(0, |(_, t)| *t);
        *spent.entry(group.clone()).or_default() += ticks.saturating_sub(earlier) as f64 * 1000.0 / TICKS_PER_S;
    }
    spent
}

/// The whole machine's CPU time from the first line of `/proc/stat`: ticks spent on work (user, nice,
/// system, irq, softirq) and in all (idle, I/O wait and time stolen by a hypervisor too), summed over the
/// cores, and how many cores there are. Every process counts, the kernel's own work too: what a phase left
/// the buyers' requests to wait for, whichever process it went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine {
    busy: u64,
    total: u64,
    cores: usize,
}

/// The machine's CPU time now; `None` where `/proc/stat` cannot be read (another OS).
pub fn machine() -> Option<Machine> {
    parse_machine(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_machine(stat: &str) -> Option<Machine> {
    let fields: Vec<u64> =
        stat.lines().next()?.strip_prefix("cpu ")?.split_whitespace().map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice: already counted in user and nice]
    let [user, nice, system, idle, iowait, irq, softirq, steal] = *fields.get(..8)? else { return None };
    let cores = stat
        .lines()
        .filter(|l| l.strip_prefix("cpu").is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit())))
        .count();
    let busy = user + nice + system + irq + softirq;
    Some(Machine { busy, total: busy + idle + iowait + steal, cores })
}

/// How many of the machine's cores were busy over a span, on average, and how many it has.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CoresBusy {
    /// 0 to `of`.
    pub busy: f64,
    pub of: usize,
}

/// The cores busy between two looks; `None` when no time passed between them.
pub fn cores_busy(before: &Machine, after: &Machine) -> Option<CoresBusy> {
    let total = after.total.checked_sub(before.total).filter(|t| *t > 0)?;
    let busy = after.busy.saturating_sub(before.busy).min(total);
    Some(CoresBusy { busy: busy as f64 / total as f64 * after.cores as f64, of: after.cores })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_spaces_and_parentheses_in_its_name_is_read() {
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 12345 0 0";
        assert_eq!(parse_stat(line), Some(("a (b) c", 325)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn roles_are_told_apart() {
        assert_eq!(group_of(false, "orderly", &["/x/orderly", "worker"]).as_deref(), Some("orderly worker"));
        assert_eq!(group_of(false, "orderly-bench", &["orderly-bench", "run-serve"]).as_deref(), Some("orderly serve"));
        assert_eq!(
            group_of(false, "postgres", &["postgres: orderly orderly 127.0.0.1"]).as_deref(),
            Some("postgresql")
        );
        assert_eq!(group_of(false, "redis-server", &["redis-server *:6379"]).as_deref(), Some("redis"));
        assert_eq!(
            group_of(false, "beam.smp", &["/usr/lib/erlang/erts/bin/beam.smp"]).as_deref(),
            Some("rabbitmq (erlang)")
        );
        assert_eq!(group_of(false, "tansu", &["/root/.cargo/bin/tansu", "broker"]).as_deref(), Some("kafka (tansu)"));
        assert_eq!(group_of(false, "bash", &["bash"]), None);
        assert_eq!(group_of(true, "orderly-bench", &["orderly-bench", "orders"]).as_deref(), Some("load generator"));
    }

    #[test]
    fn time_spent_is_the_difference_and_a_new_process_counts_whole() {
        let before =
            Snapshot { by_pid: BTreeMap::from([(1, ("redis".to_owned(), 100)), (2, ("redis".to_owned(), 50))]) };
        let after =
            Snapshot { by_pid: BTreeMap::from([(1, ("redis".to_owned(), 130)), (3, ("postgresql".to_owned(), 20))]) };
        let spent = spent_ms(&before, &after);
        assert_eq!(spent.get("redis"), Some(&300.0), "30 ticks of pid 1; pid 2 ended and is lost");
        assert_eq!(spent.get("postgresql"), Some(&200.0));
    }

    #[test]
    fn the_machine_line_gives_busy_and_all_time_and_the_cores() {
        let stat = "cpu  100 10 40 800 20 5 25 0 7 0\ncpu0 50 5 20 400 10 3 12 0 0 0\ncpu1 50 5 20 400 10 2 13 0 0 0\nintr 1 2\n";
        let before = parse_machine(stat).expect("a machine line");
        assert_eq!(before, Machine { busy: 180, total: 1000, cores: 2 });
        let after = Machine { busy: 180 + 150, total: 1000 + 200, cores: 2 };
        assert_eq!(
            cores_busy(&before, &after),
            Some(CoresBusy { busy: 1.5, of: 2 }),
            "150 of 200 ticks over two cores"
        );
        assert_eq!(cores_busy(&before, &before), None, "no time passed");
        assert_eq!(parse_machine("cpu  1 2 x\n"), None);
        assert_eq!(parse_machine("intr 1 2\n"), None);
    }
}
