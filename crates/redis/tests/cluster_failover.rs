//! A Redis Cluster failover that loses writes on one shard: a private cluster of 3 masters and 3
//! replicas (Debian's `redis-server`, on free ports), a replica stopped while its master takes writes,
//! then the master killed and the replica promoted without them. The shop on that shard must be forgotten
//! whole (reloaded from the store, as after a loss) and the shop on another shard must keep everything;
//! an order's copy whose delete was lost must not be read.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orderly_app::model::{Order, StockLevel, Token};
use orderly_app::ports::{Claim, Reserve};
use orderly_app::{OrderCache, StockCache};
use orderly_domain::{CommodityId, Money, OrderLine, OrderNo, OrderState, ShopId, SnowflakeId, Uid};
use orderly_redis::{RedisCacheConfig, RedisOrderCache, RedisStockCache, RedisTarget};

const NAMESPACE: &str = "orderly-failover-test";

/// Six nodes on `base..base + 6` (cluster bus on port + 10000), killed when dropped.
struct PrivateCluster {
    base: u16,
    nodes: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = Command::new("kill").arg("-CONT").arg(node.id().to_string()).status();
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

fn free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output().expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn info_field(port: u16, section: &str, field: &str) -> Option<String> {
    cli(port, &["info", section])
        .lines()
        .find_map(|line| line.trim().strip_prefix(&format!("{field}:")).map(str::to_owned))
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl PrivateCluster {
    fn start() -> PrivateCluster {
        let pid = u16::try_from(std::process::id() % 400).expect("small");
        let base = (0..40)
            .map(|i| 21_000 + (pid * 20 + i * 200) % 8_000)
            .find(|base| (0..6).all(|i| free(base + i) && free(base + i + 10_000)))
            .expect("six free ports (and their bus ports)");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let nodes = (0..6)
            .map(|i| {
                let port = (base + i).to_string();
                Command::new("redis-server")
                    .args(["--port", &port, "--bind", "127.0.0.1", "--cluster-enabled", "yes"])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf"), "--cluster-node-timeout", "1000"])
                    .args(["--cluster-replica-validity-factor", "0", "--appendonly", "no", "--save", ""])
                    .arg("--dir")
                    .arg(dir.path())
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("redis-server starts (Debian's redis-server)")
            })
            .collect();
        let cluster = PrivateCluster { base, nodes, _dir: dir };
        for port in cluster.ports() {
            wait_for("a node answers", Duration::from_secs(10), || cli(port, &["ping"]) == "PONG");
        }
        let addresses: Vec<String> = cluster.ports().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli --cluster create runs");
        assert!(created.success(), "the cluster was created");
        for port in cluster.ports() {
            wait_for("the cluster is ok, every replica linked", Duration::from_secs(20), || {
                let linked = match info_field(port, "replication", "role").as_deref() {
                    Some("slave") => info_field(port, "replication", "master_link_status").as_deref() == Some("up"),
                    role => role.is_some(),
                };
                let nodes = cli(port, &["cluster", "nodes"]);
                linked
                    && cli(port, &["cluster", "info"]).contains("cluster_state:ok")
                    && nodes.lines().filter(|line| line.contains("slave")).count() == 3
            });
        }
        cluster
    }

    fn ports(&self) -> impl Iterator<Item = u16> + use<> {
        let base = self.base;
        (0..6).map(move |i| base + i)
    }

    fn child(&mut self, port: u16) -> &mut Child {
        &mut self.nodes[usize::from(port - self.base)]
    }

    /// The master serving `shop`'s slot, and its replica.
    fn shard_of(&self, shop: ShopId) -> (u16, u16) {
        self.shard_of_key(&format!("{{s:{}}}", shop.0))
    }

    /// The master serving `key`'s slot, and its replica.
    fn shard_of_key(&self, key: &str) -> (u16, u16) {
        let slot = cli(self.base, &["cluster", "keyslot", key]);
        let slot: u16 = slot.parse().expect("a slot");
        let nodes = cli(self.base, &["cluster", "nodes"]);
        let port_of = |address: &str| -> u16 {
            address.split(['@', ':']).nth(1).and_then(|p| p.parse().ok()).expect("a node's port")
        };
        let master = nodes
            .lines()
            .find(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields[2].contains("master")
                    && fields[8..].iter().any(|range| {
                        let (from, to) = range.split_once('-').unwrap_or((range, range));
                        from.parse::<u16>().is_ok_and(|from| from <= slot)
                            && to.parse::<u16>().is_ok_and(|to| slot <= to)
                    })
            })
            .expect("a master serves the slot");
        let master_id = master.split_whitespace().next().expect("an id");
        let replica = nodes
            .lines()
            .find(|line| line.split_whitespace().nth(3) == Some(master_id))
            .expect("the master has a replica");
        (
            port_of(master.split_whitespace().nth(1).expect("address")),
            port_of(replica.split_whitespace().nth(1).expect("address")),
        )
    }
}

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill").arg(signal).arg(child.id().to_string()).status().expect("kill runs");
    assert!(status.success(), "kill {signal}");
}

/// A cache on the cluster with 10 units of commodity 1 in `shop` and of commodity 2 in a shop on another
/// shard (returned).
async fn two_shops(cluster: &PrivateCluster, shop: ShopId) -> (RedisStockCache, ShopId) {
    let master = cluster.shard_of(shop).0;
    let other = (2..200).map(ShopId).find(|s| cluster.shard_of(*s).0 != master).expect("a shop elsewhere");
    let nodes = cluster.ports().map(|p| format!("redis://127.0.0.1:{p}")).collect();
    let config = RedisCacheConfig {
        target: RedisTarget::Cluster(nodes),
        namespace: NAMESPACE.to_owned(),
        token_ttl_ms: 600_000,
    };
    let cache = RedisStockCache::connect(config).await.expect("connect to the private cluster");
    let levels = [
        (CommodityId(1), StockLevel { shop_id: shop, initial: 10, available: 10, version: 1 }),
        (CommodityId(2), StockLevel { shop_id: other, initial: 10, available: 10, version: 1 }),
    ];
    cache.init(&levels, &[]).await.expect("init");
    (cache, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_that_lost_writes_reloads_only_the_shards_that_lost_them() {
    let mut cluster = PrivateCluster::start();
    let lossy = ShopId(1);
    let (master, replica) = cluster.shard_of(lossy);
    let (cache, intact) = two_shops(&cluster, lossy).await;
    let token = |n: u64, shop: ShopId| Token::entry(OrderNo::new(SnowflakeId(n), Uid(7)), shop);
    let (kept, lost, elsewhere) = (token(1, lossy), token(2, lossy), token(3, intact));
    assert_eq!(cache.reserve(kept, &[(CommodityId(1), 3)], false).await.expect("reserve"), Reserve::Reserved);
    wait_for("the replica has every write", Duration::from_secs(10), || {
        info_field(master, "replication", "master_repl_offset")
            == info_field(replica, "replication", "slave_repl_offset")
    });

    // The replica stops hearing its master; the master takes one more reservation, then dies.
    signal(cluster.child(replica), "-STOP");
    // Its link is cut while it sleeps, so nothing written from now on can be waiting in its socket.
    assert_eq!(cli(master, &["client", "kill", "type", "replica"]), "1");
    assert_eq!(cache.reserve(lost, &[(CommodityId(1), 2)], false).await.expect("reserve"), Reserve::Reserved);
    assert_eq!(cache.reserve(elsewhere, &[(CommodityId(2), 4)], false).await.expect("reserve"), Reserve::Reserved);
    let _ = cluster.child(master).kill();
    signal(cluster.child(replica), "-CONT");
    wait_for("the replica takes over", Duration::from_secs(30), || {
        info_field(replica, "replication", "role").as_deref() == Some("master")
            && cli(replica, &["cluster", "info"]).contains("cluster_state:ok")
    });

    // What the promoted replica holds: the earlier reservation, not the later one, and a counter that
    // counts only the earlier one — trusted as it is, the counter would sell the lost units again.
    let token_key = |t: Token| format!("{NAMESPACE}:{{s:{}}}:token:{}:{}", t.shop_id.0, t.order_no, t.generation);
    assert_eq!(cli(replica, &["exists", &token_key(kept)]), "1");
    assert_eq!(cli(replica, &["exists", &token_key(lost)]), "0");
    let counter = format!("{NAMESPACE}:{{s:{}}}:stock:1", lossy.0);
    assert_eq!(cli(replica, &["hget", &counter, "available"]), "7");

    // The shard that lost writes is forgotten whole, reloaded from the store; the other keeps its own.
    assert_eq!(cache.claim(kept).await.expect("claim"), Claim::Missing, "the lossy shard's tokens are not trusted");
    assert_eq!(cache.claim(lost).await.expect("claim"), Claim::Missing);
    assert_eq!(cache.claim(elsewhere).await.expect("claim"), Claim::Claimed, "the other shard keeps its tokens");
    assert_eq!(cache.available(&[CommodityId(1), CommodityId(2)]).await.expect("available"), vec![None, Some(6)]);
    let again = Token::worker(OrderNo::new(SnowflakeId(2), Uid(7)), lossy);
    assert_eq!(
        cache.reserve(again, &[(CommodityId(1), 2)], true).await.expect("reserve"),
        Reserve::NotLoaded(vec![CommodityId(1)]),
        "the lossy shard's counters are reloaded from the store first"
    );
}

/// A shard that fails over and back — its first master a master again, under the same node id — may
/// still have lost writes on the way (the node came back as a replica and copied what its replacement
/// had), so its shops are reloaded too: the marker is the master's replication id, new at every
/// promotion, not the node's id. Here the failovers are manual (`CLUSTER FAILOVER FORCE` on a linked
/// replica, nothing written meanwhile: nothing is lost), and the shop is reloaded all the same; a shop on
/// another shard keeps its token. With the node's id as the marker, this fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_failed_over_and_back_is_reloaded_too() {
    let cluster = PrivateCluster::start();
    let shop = ShopId(1);
    let (master, replica) = cluster.shard_of(shop);
    let (cache, other) = two_shops(&cluster, shop).await;
    let here = Token::entry(OrderNo::new(SnowflakeId(1), Uid(7)), shop);
    let elsewhere = Token::entry(OrderNo::new(SnowflakeId(2), Uid(7)), other);
    assert_eq!(cache.reserve(here, &[(CommodityId(1), 3)], false).await.expect("reserve"), Reserve::Reserved);
    assert_eq!(cache.reserve(elsewhere, &[(CommodityId(2), 3)], false).await.expect("reserve"), Reserve::Reserved);

    let master_id = cli(master, &["cluster", "myid"]);
    for (promoted, demoted) in [(replica, master), (master, replica)] {
        // A manual failover needs a replica linked to its master (a node just demoted is still syncing).
        wait_for("the replica is linked", Duration::from_secs(20), || {
            info_field(promoted, "replication", "master_link_status").as_deref() == Some("up")
        });
        assert_eq!(cli(promoted, &["cluster", "failover", "force"]), "OK");
        wait_for("the failover", Duration::from_secs(30), || {
            info_field(promoted, "replication", "role").as_deref() == Some("master")
                && info_field(demoted, "replication", "role").as_deref() == Some("slave")
                && cli(promoted, &["cluster", "info"]).contains("cluster_state:ok")
        });
    }
    assert_eq!(cli(master, &["cluster", "myid"]), master_id, "the same node leads the shard again");
    assert_eq!(cache.claim(here).await.expect("claim"), Claim::Missing, "the shard changed masters twice: reloaded");
    assert_eq!(cache.claim(elsewhere).await.expect("claim"), Claim::Claimed, "the other shard keeps its token");
}

/// The order cache across a failover that loses a delete: a copy of an order "to pay" is written and
/// replicated, the order changes (paid) and its copy is deleted on the master only, the master dies and
/// its replica — still holding the old copy — takes over. The buyer must not be shown the old copy for
/// its time to live: it is a miss (the store answers), and a copy written after the failover is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_copy_whose_delete_a_failover_lost_is_not_read() {
    let mut cluster = PrivateCluster::start();
    let namespace = "orderly-failover-orders";
    let nodes = cluster.ports().map(|p| format!("redis://127.0.0.1:{p}")).collect();
    let cache = RedisOrderCache::connect(&RedisTarget::Cluster(nodes), namespace.to_owned(), 600_000)
        .await
        .expect("connect to the private cluster");
    let mut order = Order {
        order_no: OrderNo::new(SnowflakeId(1), Uid(7)),
        buyer: Uid(7),
        to_uid: Uid(7),
        shop_id: ShopId(1),
        pay_at_once: true,
        lines: vec![OrderLine { commodity_id: CommodityId(1), quantity: 1, unit_price: Money::from_cents(100) }],
        total: Money::from_cents(100),
        state: OrderState::ToPay,
        created_ms: 1,
        updated_ms: 1,
        payment_attempt: None,
        payment_id: None,
        last_decline: None,
        rejected_for: None,
        token_generation: Some(0),
        stock_versions: vec![1],
        trace: None,
    };
    let key = format!("{namespace}:order:{}", order.order_no);
    let (master, replica) = cluster.shard_of_key(&key);
    cache.put(&order).await.expect("put");
    assert_eq!(cache.get(order.order_no).await.expect("get"), Some(order.clone()));
    wait_for("the replica has every write", Duration::from_secs(10), || {
        info_field(master, "replication", "master_repl_offset")
            == info_field(replica, "replication", "slave_repl_offset")
    });

    // The replica stops hearing its master; the order is paid and its copy deleted there only.
    signal(cluster.child(replica), "-STOP");
    assert_eq!(cli(master, &["client", "kill", "type", "replica"]), "1");
    cache.forget(&[order.order_no]).await.expect("forget");
    let _ = cluster.child(master).kill();
    signal(cluster.child(replica), "-CONT");
    wait_for("the replica takes over", Duration::from_secs(30), || {
        info_field(replica, "replication", "role").as_deref() == Some("master")
            && cli(replica, &["cluster", "info"]).contains("cluster_state:ok")
    });

    assert_eq!(cli(replica, &["exists", &key]), "1", "the promoted replica still holds the old copy");
    assert_eq!(cache.get(order.order_no).await.expect("get"), None, "a copy from before the failover is a miss");
    assert_eq!(cli(replica, &["exists", &key]), "0", "and is dropped");
    order.state = OrderState::Paid;
    cache.put(&order).await.expect("put on the new master");
    assert_eq!(cache.get(order.order_no).await.expect("get"), Some(order), "copies written since are read");
}
