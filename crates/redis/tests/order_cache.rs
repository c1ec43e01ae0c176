//! `RedisOrderCache` against Redis (`TEST_REDIS_URL`, default database 15), each test in a namespace
//! of its own: a copy round-trips, a delete removes it, it expires on its own, and one written on another
//! master (or by an earlier build, unstamped) is not read.

use orderly_app::OrderCache;
use orderly_app::model::Order;
use orderly_domain::{CommodityId, Money, OrderLine, OrderNo, OrderState, ShopId, SnowflakeId, Uid};
use orderly_redis::{RedisOrderCache, RedisTarget};
use rand::TryRngCore;

fn url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/15".to_owned())
}

async fn cache(ttl_ms: u64) -> RedisOrderCache {
    cache_in(ttl_ms).await.0
}

/// A cache in a namespace of its own, and the namespace.
async fn cache_in(ttl_ms: u64) -> (RedisOrderCache, String) {
    let mut bytes = [0u8; 8];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).expect("randomness");
    let namespace = format!("orderly-test-{}", u64::from_le_bytes(bytes));
    let cache = RedisOrderCache::connect(&RedisTarget::Single(url()), namespace.clone(), ttl_ms)
        .await
        .expect("Redis is up (CI starts it; see .ci/run)");
    (cache, namespace)
}

fn order(n: u64) -> Order {
    Order {
        order_no: OrderNo::new(SnowflakeId(n), Uid(7)),
        buyer: Uid(7),
        to_uid: Uid(8),
        shop_id: ShopId(100_001),
        pay_at_once: false,
        lines: vec![OrderLine { commodity_id: CommodityId(1), quantity: 2, unit_price: Money::from_cents(2999) }],
        total: Money::from_cents(5998),
        state: OrderState::ToPay,
        created_ms: 1,
        updated_ms: 2,
        payment_attempt: None,
        payment_id: None,
        last_decline: None,
        rejected_for: None,
        token_generation: Some(0),
        stock_versions: vec![3],
        trace: None,
    }
}

#[tokio::test]
async fn a_copy_round_trips_and_a_delete_removes_it() {
    let cache = cache(60_000).await;
    let (first, second) = (order(1), order(2));
    assert_eq!(cache.get(first.order_no).await.expect("get"), None);
    cache.put(&first).await.expect("put");
    cache.put(&second).await.expect("put");
    assert_eq!(cache.get(first.order_no).await.expect("get"), Some(first.clone()));
    cache.forget(&[first.order_no]).await.expect("forget");
    cache.forget(&[first.order_no, order(3).order_no]).await.expect("forget again, with one never cached");
    cache.forget(&[]).await.expect("forget nothing");
    assert_eq!(cache.get(first.order_no).await.expect("get"), None);
    assert_eq!(cache.get(second.order_no).await.expect("get"), Some(second), "only that order's copy");
}

#[tokio::test]
async fn a_copy_expires_on_its_own() {
    let cache = cache(100).await;
    cache.put(&order(1)).await.expect("put");
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(cache.get(order(1).order_no).await.expect("get"), None);
}

/// On a Redis Cluster the copies of several orders live in several slots (masters): one delete of
/// them all removes each.
#[tokio::test]
async fn a_delete_of_many_removes_each_on_a_cluster() {
    let nodes = std::env::var("TEST_REDIS_CLUSTER_NODES")
        .unwrap_or_else(|_| "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003".to_owned());
    let mut bytes = [0u8; 8];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).expect("randomness");
    let namespace = format!("orderly-test-{}", u64::from_le_bytes(bytes));
    let target = RedisTarget::Cluster(nodes.split(',').map(str::to_owned).collect());
    let cache = RedisOrderCache::connect(&target, namespace, 60_000)
        .await
        .expect("a Redis Cluster is up (scripts/redis-cluster-up; CI starts it)");
    let orders: Vec<Order> = (1..=20).map(order).collect();
    for order in &orders {
        cache.put(order).await.expect("put");
    }
    let numbers: Vec<OrderNo> = orders.iter().map(|o| o.order_no).collect();
    cache.forget(&numbers).await.expect("forget");
    for number in numbers {
        assert_eq!(cache.get(number).await.expect("get"), None, "{number} deleted");
    }
}

/// A copy is read only on the master that wrote it (a failover may have lost its deletes; the real
/// failover is in `cluster_failover.rs`): one stamped with another master's replication id, or unstamped
/// (an earlier build's), is a miss and is dropped.
#[tokio::test]
async fn a_copy_written_on_another_master_is_not_read() {
    let (cache, namespace) = cache_in(60_000).await;
    let order = order(1);
    cache.put(&order).await.expect("put");
    let key = format!("{namespace}:order:{}", order.order_no);
    let mut raw = redis::Client::open(url()).expect("url").get_multiplexed_async_connection().await.expect("Redis");
    let copy: String = redis::cmd("GET").arg(&key).query_async(&mut raw).await.expect("get");
    let (stamp, json) = copy.split_once(' ').expect("a stamped copy");
    assert_eq!(stamp.len(), 40, "a replication id: {stamp}");
    for stale in [format!("{} {json}", "0".repeat(40)), json.to_owned()] {
        let () = redis::cmd("SET").arg(&key).arg(&stale).query_async(&mut raw).await.expect("set");
        assert_eq!(cache.get(order.order_no).await.expect("get"), None, "{stale}");
        let exists: bool = redis::cmd("EXISTS").arg(&key).query_async(&mut raw).await.expect("exists");
        assert!(!exists, "a stale copy is dropped");
    }
    cache.put(&order).await.expect("put");
    assert_eq!(cache.get(order.order_no).await.expect("get"), Some(order));
}
