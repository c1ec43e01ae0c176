//! What the in-process cache remembers, and for how long: a confirmed reservation and a restock's marker
//! for `settled_ttl_ms`, an open reservation and a released or refused one for `token_ttl_ms` — so its
//! memory follows the orders of the last minute under a steady load, not those of the last hour.

use std::sync::Arc;

use orderly_app::model::{Restock, StockLevel, Token, TokenState};
use orderly_app::ports::{Claim, Reserve};
use orderly_app::time::ManualClock;
use orderly_app::{Clock, StockCache};
use orderly_domain::{CommodityId, OrderNo, ShopId, SnowflakeId, Uid};
use orderly_local::LocalStockCache;

const T0_MS: u64 = 1_800_000_000_000;
const HOUR_MS: u64 = 60 * 60 * 1000;
const MINUTE_MS: u64 = 60 * 1000;
const SHOP: ShopId = ShopId(100);
const A: CommodityId = CommodityId(1);

fn entry(n: u64) -> Token {
    Token::entry(OrderNo::new(SnowflakeId(n), Uid(7)), SHOP)
}

async fn cache_with(clock: &Arc<ManualClock>, available: u64) -> LocalStockCache {
    let cache = LocalStockCache::new(Arc::clone(clock) as Arc<dyn Clock>, HOUR_MS, MINUTE_MS);
    cache
        .init(&[(A, StockLevel { shop_id: SHOP, initial: available, available, version: 0 })], &[])
        .await
        .expect("init");
    cache
}

async fn available(cache: &LocalStockCache) -> Option<u64> {
    cache.available(&[A]).await.expect("available")[0]
}

#[tokio::test]
async fn a_confirmed_reservation_is_forgotten_after_a_minute_a_released_or_refused_one_after_an_hour() {
    let clock = Arc::new(ManualClock::new(T0_MS));
    let cache = cache_with(&clock, 10).await;
    let (confirmed, released, refused, open) = (entry(1), entry(2), entry(3), entry(4));
    for token in [confirmed, released, open] {
        assert_eq!(cache.reserve(token, &[(A, 2)], false).await, Ok(Reserve::Reserved));
    }
    assert_eq!(cache.claim(confirmed).await, Ok(Claim::Claimed));
    cache.confirm(confirmed, &[(A, 2, 1)]).await.expect("confirm");
    assert_eq!(cache.release(released).await, Ok(Some(TokenState::Reserved)));
    assert_eq!(cache.release(refused).await, Ok(None), "unknown: remembered as refused");
    cache.restock(&Restock { key: "close:9".into(), shop_id: SHOP, lines: vec![(A, 1, 2)] }).await.expect("restock");
    assert_eq!(available(&cache).await, Some(7), "10 - 2 sold - 2 held + 1 back");

    // A step of the wall clock is not time passing.
    clock.step_wall_ms(2 * HOUR_MS as i64);
    clock.advance_ms(MINUTE_MS - 1);
    assert_eq!(cache.claim(confirmed).await, Ok(Claim::Confirmed), "remembered within the minute");

    clock.advance_ms(1);
    assert_eq!(cache.claim(confirmed).await, Ok(Claim::Missing), "forgotten after it");
    assert_eq!(cache.claim(released).await, Ok(Claim::Released), "a release is remembered longer");
    assert_eq!(
        cache.reserve(refused, &[(A, 1)], true).await,
        Ok(Reserve::AlreadyHeld(TokenState::Released)),
        "so is a refusal: an error answer's late create must still find it refused"
    );
    // What the store reports again, however late, is not counted twice: the versions are the counter's.
    cache.confirm(confirmed, &[(A, 2, 1)]).await.expect("confirm again");
    cache.restock(&Restock { key: "close:9".into(), shop_id: SHOP, lines: vec![(A, 1, 2)] }).await.expect("again");
    assert_eq!(available(&cache).await, Some(7), "nothing counted twice");

    clock.advance_ms(HOUR_MS - MINUTE_MS);
    assert_eq!(cache.claim(released).await, Ok(Claim::Missing), "the release after the hour");
    assert_eq!(cache.claim(refused).await, Ok(Claim::Missing), "the refusal after the hour");
    assert_eq!(cache.claim(open).await, Ok(Claim::Missing), "the unclaimed reservation after the hour");
    assert_eq!(available(&cache).await, Some(9), "its units back as it went");
}

#[tokio::test]
async fn a_confirmed_token_is_kept_at_least_the_floor() {
    let clock = Arc::new(ManualClock::new(T0_MS));
    let cache = LocalStockCache::new(Arc::clone(&clock) as Arc<dyn Clock>, HOUR_MS, 0);
    cache.init(&[(A, StockLevel { shop_id: SHOP, initial: 5, available: 5, version: 0 })], &[]).await.expect("init");
    assert_eq!(cache.reserve(entry(1), &[(A, 1)], true).await, Ok(Reserve::Reserved));
    cache.confirm(entry(1), &[(A, 1, 1)]).await.expect("confirm");
    clock.advance_ms(orderly_local::cache::SETTLED_TTL_MIN_MS - 1);
    assert_eq!(cache.claim(entry(1)).await, Ok(Claim::Confirmed), "a setting of 0 is raised to the floor");
}

/// A steady stream of orders, each reserved, claimed and confirmed, every other one's stock returned by
/// a restock: after the first minute the cache holds about a minute's worth of records and expiry
/// entries, however many orders went by — not an hour's.
#[tokio::test]
async fn memory_follows_the_last_minute_of_orders_not_the_last_hour() {
    let clock = Arc::new(ManualClock::new(T0_MS));
    let cache = cache_with(&clock, u64::MAX / 2).await;
    let (orders, per_ms) = (400_000u64, 1u64);
    // Kept long at the queue's front, behind which the confirmed orders' stale entries pile up: an
    // unclaimed reservation and a refusal, which the sweeps must keep.
    let (open, refused) = (entry(u64::MAX - 1), entry(u64::MAX));
    assert_eq!(cache.reserve(open, &[(A, 1)], false).await, Ok(Reserve::Reserved));
    assert_eq!(cache.release(refused).await, Ok(None));
    let mut most = (0, 0);
    for n in 1..=orders {
        let token = entry(n);
        assert_eq!(cache.reserve(token, &[(A, 1)], false).await, Ok(Reserve::Reserved));
        assert_eq!(cache.claim(token).await, Ok(Claim::Claimed));
        cache.confirm(token, &[(A, 1, 2 * n - 1)]).await.expect("confirm");
        if n % 2 == 0 {
            let restock = Restock { key: format!("close:{n}"), shop_id: SHOP, lines: vec![(A, 1, 2 * n)] };
            cache.restock(&restock).await.expect("restock");
        }
        clock.advance_ms(per_ms);
        if n > MINUTE_MS {
            let (records, entries) = cache.held().expect("held");
            most = (most.0.max(records), most.1.max(entries));
        }
    }
    assert_eq!(cache.reserve(refused, &[(A, 1)], true).await, Ok(Reserve::AlreadyHeld(TokenState::Released)));
    let before = available(&cache).await.expect("loaded");
    // Their entries outlived every sweep: they still expire, the unclaimed reservation's unit coming back.
    clock.advance_ms(HOUR_MS);
    assert_eq!(cache.claim(refused).await, Ok(Claim::Missing), "the refusal went after its hour");
    assert_eq!(cache.claim(open).await, Ok(Claim::Missing), "so did the unclaimed reservation");
    assert_eq!(available(&cache).await, Some(before + 1), "its unit back");
    let minute_of_records = (MINUTE_MS / per_ms) as usize * 3 / 2 + 2;
    assert!(most.0 <= minute_of_records + 1, "records {} for {minute_of_records} of a minute", most.0);
    assert!(most.1 <= 4 * minute_of_records + 4_096, "expiry entries {} for {minute_of_records}", most.1);
    let every_order = orders as usize * 3 / 2;
    assert!(every_order > 4 * minute_of_records + 4_096, "long enough that keeping every order fails both");
}
