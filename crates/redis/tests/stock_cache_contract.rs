//! The `StockCache` contract suite against Redis (`TEST_REDIS_URL`, default database 15 of the
//! local server) and against a Redis Cluster (`TEST_REDIS_CLUSTER_NODES`, default the one
//! `scripts/redis-cluster-up` starts), each case in a namespace of its own; and what losing Redis does.

use std::sync::Arc;

use orderly_app::StockCache;
use orderly_app::model::{StockLevel, Token, TokenState};
use orderly_app::ports::{Claim, Reserve};
use orderly_domain::{CommodityId, OrderNo, ShopId, SnowflakeId, Uid};
use orderly_redis::{RedisCacheConfig, RedisStockCache, RedisTarget};
use rand::TryRngCore;

fn url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/15".to_owned())
}

fn namespace() -> String {
    let mut bytes = [0u8; 8];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).expect("randomness");
    format!("orderly-test-{}", u64::from_le_bytes(bytes))
}

async fn cache(namespace: String) -> RedisStockCache {
    RedisStockCache::connect(RedisCacheConfig {
        target: RedisTarget::Single(url()),
        namespace,
        token_ttl_ms: 10 * 60 * 1000,
    })
    .await
    .expect("Redis is up (CI starts it; see .ci/run)")
}

orderly_contract::stock_cache_contract!(|| async { Arc::new(cache(namespace()).await) as Arc<dyn StockCache> });

mod on_a_cluster {
    use super::*;

    fn nodes() -> Vec<String> {
        std::env::var("TEST_REDIS_CLUSTER_NODES")
            .unwrap_or_else(|_| "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003".to_owned())
            .split(',')
            .map(str::to_owned)
            .collect()
    }

    async fn cache(namespace: String) -> RedisStockCache {
        let target = RedisTarget::Cluster(nodes());
        RedisStockCache::connect(RedisCacheConfig { target, namespace, token_ttl_ms: 10 * 60 * 1000 })
            .await
            .expect("a Redis Cluster is up (scripts/redis-cluster-up; CI starts it)")
    }

    orderly_contract::stock_cache_contract!(|| async { Arc::new(cache(namespace()).await) as Arc<dyn StockCache> });
}

/// A shop whose keys were written on another master (here: its marker says so, as after a replica that
/// missed the last writes took over) is forgotten whole — counters not loaded, tokens missing, as after a
/// loss — and no other shop is touched.
#[tokio::test]
async fn a_shop_written_on_another_master_is_forgotten_alone() {
    let namespace = namespace();
    let cache = cache(namespace.clone()).await;
    let (moved, kept) = (ShopId(100_011), ShopId(100_012));
    let levels = [
        (CommodityId(1), StockLevel { shop_id: moved, initial: 10, available: 10, version: 1 }),
        (CommodityId(2), StockLevel { shop_id: kept, initial: 10, available: 10, version: 1 }),
    ];
    cache.init(&levels, &[]).await.expect("init");
    let on_moved = Token::entry(OrderNo::new(SnowflakeId(1), Uid(7)), moved);
    let on_kept = Token::entry(OrderNo::new(SnowflakeId(2), Uid(7)), kept);
    assert_eq!(cache.reserve(on_moved, &[(CommodityId(1), 3)], false).await.expect("reserve"), Reserve::Reserved);
    assert_eq!(cache.reserve(on_kept, &[(CommodityId(2), 4)], false).await.expect("reserve"), Reserve::Reserved);

    let client = redis::Client::open(url()).expect("client");
    let mut connection = client.get_multiplexed_async_connection().await.expect("connect");
    let marker = format!("{namespace}:{{s:{}}}:master", moved.0);
    let _: () = redis::cmd("SET").arg(&marker).arg("another-master").query_async(&mut connection).await.expect("set");

    assert_eq!(cache.claim(on_moved).await.expect("claim"), Claim::Missing, "the moved shop's token is not trusted");
    assert_eq!(cache.available(&[CommodityId(1), CommodityId(2)]).await.expect("available"), vec![None, Some(6)]);
    let again = Token::worker(OrderNo::new(SnowflakeId(1), Uid(7)), moved);
    assert_eq!(
        cache.reserve(again, &[(CommodityId(1), 3)], true).await.expect("reserve"),
        Reserve::NotLoaded(vec![CommodityId(1)]),
        "the moved shop's counter must be reloaded from the store first"
    );
    assert_eq!(cache.claim(on_kept).await.expect("claim"), Claim::Claimed, "the other shop keeps its token");
    cache.init(&levels, &[]).await.expect("reload");
    assert_eq!(cache.available(&[CommodityId(1), CommodityId(2)]).await.expect("available"), vec![Some(10), Some(6)]);
    assert_eq!(cache.reserve(again, &[(CommodityId(1), 3)], true).await.expect("reserve"), Reserve::Reserved);
}

/// Redis keeps nothing on disk here: after FLUSHALL (or a restart) counters and tokens are gone. The cache
/// must then say so — not loaded, missing — so the flow reloads from the store and reserves again.
#[tokio::test]
async fn a_flushed_redis_answers_not_loaded_and_missing_never_reserved() {
    let namespace = namespace();
    let cache = cache(namespace.clone()).await;
    let shop = ShopId(100_001);
    let level = StockLevel { shop_id: shop, initial: 10, available: 10, version: 1 };
    cache.init(&[(CommodityId(1), level)], &[]).await.expect("init");
    let token = Token::entry(OrderNo::new(SnowflakeId(1), Uid(7)), shop);
    assert_eq!(cache.reserve(token, &[(CommodityId(1), 3)], false).await.expect("reserve"), Reserve::Reserved);

    // Lose everything of this namespace (FLUSHALL would also hit the other tests running now).
    let client = redis::Client::open(url()).expect("client");
    let mut connection = client.get_multiplexed_async_connection().await.expect("connect");
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{namespace}:*")).query_async(&mut connection).await.expect("keys");
    let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut connection).await.expect("flush");

    assert_eq!(cache.claim(token).await.expect("claim"), Claim::Missing, "a lost token is missing, not reserved");
    assert_eq!(cache.available(&[CommodityId(1)]).await.expect("available"), vec![None]);
    let again = Token::worker(OrderNo::new(SnowflakeId(1), Uid(7)), shop);
    assert_eq!(
        cache.reserve(again, &[(CommodityId(1), 3)], true).await.expect("reserve"),
        Reserve::NotLoaded(vec![CommodityId(1)]),
        "the counter must be reloaded from the store first"
    );
    // A release of the lost token is an empty rollback.
    assert_eq!(cache.release(token).await.expect("release"), None);
    assert_eq!(cache.claim(token).await.expect("claim"), Claim::Released);
    assert_eq!(cache.release(token).await.expect("release"), Some(TokenState::Released));
}

const SHORT_TTL_SHOP: ShopId = ShopId(100_002);

/// A cache whose tokens live 200 ms, with 10 units of commodity 1 in `SHORT_TTL_SHOP`.
async fn short_lived_tokens() -> (RedisStockCache, ShopId) {
    let target = RedisTarget::Single(url());
    let cache = RedisStockCache::connect(RedisCacheConfig { target, namespace: namespace(), token_ttl_ms: 200 })
        .await
        .expect("Redis is up (CI starts it; see .ci/run)");
    let level = StockLevel { shop_id: SHORT_TTL_SHOP, initial: 10, available: 10, version: 1 };
    cache.init(&[(CommodityId(1), level)], &[]).await.expect("init");
    (cache, SHORT_TTL_SHOP)
}

/// A claimed token outlives the token TTL (its create may wait in a backlog longer than that); a
/// reserved one expires. Before, a claimed token expired too, and the worker reserved the order's
/// units a second time.
#[tokio::test]
async fn a_claimed_token_does_not_expire_a_reserved_one_does() {
    let (cache, shop) = short_lived_tokens().await;
    let claimed = Token::entry(OrderNo::new(SnowflakeId(1), Uid(7)), shop);
    let reserved = Token::entry(OrderNo::new(SnowflakeId(2), Uid(7)), shop);
    let own = Token::worker(OrderNo::new(SnowflakeId(3), Uid(7)), shop);
    for token in [claimed, reserved] {
        assert_eq!(cache.reserve(token, &[(CommodityId(1), 1)], false).await.expect("reserve"), Reserve::Reserved);
    }
    assert_eq!(cache.reserve(own, &[(CommodityId(1), 1)], true).await.expect("reserve"), Reserve::Reserved);
    assert_eq!(cache.claim(claimed).await.expect("claim"), Claim::Claimed);
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(cache.claim(claimed).await.expect("claim"), Claim::Claimed, "claimed: still held");
    assert_eq!(cache.claim(own).await.expect("claim"), Claim::Claimed, "a worker's own: still held");
    assert_eq!(cache.claim(reserved).await.expect("claim"), Claim::Missing, "reserved: expired");
}

/// A create redelivered after its confirmed token expired confirms it again with the store's
/// deductions: the counter counted them when the token reserved, and must not count them again. Before,
/// a confirmed token that had been claimed never expired (one key per order, for ever), and one that
/// expired had its deductions counted again.
#[tokio::test]
async fn a_deduction_reported_after_its_token_expired_is_not_counted_again() {
    let (cache, shop) = short_lived_tokens().await;
    let token = Token::entry(OrderNo::new(SnowflakeId(1), Uid(7)), shop);
    assert_eq!(cache.reserve(token, &[(CommodityId(1), 3)], true).await.expect("reserve"), Reserve::Reserved);
    cache.confirm(token, &[(CommodityId(1), 3, 2)]).await.expect("confirm");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(cache.claim(token).await.expect("claim"), Claim::Missing, "the confirmed token expired");
    cache.confirm(token, &[(CommodityId(1), 3, 2)]).await.expect("confirm redelivered");
    assert_eq!(cache.available(&[CommodityId(1)]).await.expect("available"), vec![Some(7)]);
}
