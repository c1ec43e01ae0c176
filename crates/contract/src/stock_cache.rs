//! The `StockCache` contract (the seed's Redis + Lua role). Each case takes a fresh, empty cache.

use std::sync::Arc;

use orderly_app::model::{Restock, StockLevel, Token, TokenState};
use orderly_app::ports::{Claim, Held, Reserve, StockCache};
use orderly_domain::{CommodityId, OrderNo, ShopId, SnowflakeId, Uid};

/// Commodities A and B are sold by `SHOP`; C by `OTHER_SHOP`.
const A: CommodityId = CommodityId(1);
const B: CommodityId = CommodityId(2);
const C: CommodityId = CommodityId(3);
const SHOP: ShopId = ShopId(100_001);
const OTHER_SHOP: ShopId = ShopId(100_002);

fn token(n: u64) -> Token {
    Token::entry(OrderNo::new(SnowflakeId(n), Uid(7)), SHOP)
}

/// When the reservation checks of the cases are due (a cache that keeps them).
const CHECK_AT_MS: u64 = 1_000;

fn level(available: u64, version: u64) -> StockLevel {
    StockLevel { shop_id: SHOP, initial: available, available, version }
}

async fn available(cache: &Arc<dyn StockCache>, ids: &[CommodityId]) -> Vec<Option<u64>> {
    cache.available(ids).await.expect("available")
}

async fn loaded(cache: &Arc<dyn StockCache>, levels: &[(CommodityId, u64)]) {
    let levels: Vec<(CommodityId, StockLevel)> = levels.iter().map(|(id, n)| (*id, level(*n, 1))).collect();
    cache.init(&levels, &[]).await.expect("init");
}

pub async fn init_sets_only_absent_levels(cache: Arc<dyn StockCache>) {
    cache.init(&[(A, level(10, 1))], &[]).await.expect("init");
    // The seed's init: a present counter is never overwritten (it may hold live reservations).
    cache.init(&[(A, level(99, 5)), (B, level(3, 1))], &[]).await.expect("init");
    assert_eq!(available(&cache, &[A, B, C]).await, vec![Some(10), Some(3), None]);
}

pub async fn reserve_is_all_or_nothing(cache: Arc<dyn StockCache>) {
    loaded(&cache, &[(A, 10), (B, 1)]).await;
    let refused = cache.reserve(token(1), &[(A, 5), (B, 2)], false).await.expect("reserve");
    assert_eq!(refused, Reserve::Insufficient { commodity_id: B, available: 1 });
    assert_eq!(available(&cache, &[A, B]).await, vec![Some(10), Some(1)], "nothing taken from A either");
    assert_eq!(cache.reserve(token(2), &[(A, 5), (B, 1)], false).await.expect("reserve"), Reserve::Reserved);
    assert_eq!(available(&cache, &[A, B]).await, vec![Some(5), Some(0)]);
    // The refused token left nothing behind: it can reserve later.
    assert_eq!(cache.reserve(token(1), &[(A, 5)], false).await.expect("reserve"), Reserve::Reserved);
}

pub async fn reserve_of_an_unloaded_commodity_changes_nothing(cache: Arc<dyn StockCache>) {
    loaded(&cache, &[(A, 10)]).await;
    let answer = cache.reserve(token(1), &[(A, 1), (B, 1)], false).await.expect("reserve");
    assert_eq!(answer, Reserve::NotLoaded(vec![B]));
    assert_eq!(available(&cache, &[A]).await, vec![Some(10)]);
    assert_eq!(cache.claim(token(1)).await.expect("claim"), Claim::Missing, "no token was recorded");
}

pub async fn reserve_is_idempotent_per_token(cache: Arc<dyn StockCache>) {
    loaded(&cache, &[(A, 10)]).await;
    assert_eq!(cache.reserve(token(1), &[(A, 4)], false).await.expect("reserve"), Reserve::Reserved);
    let again = cache.reserve(token(1), &[(A, 4)], false).await.expect("reserve");
    assert_eq!(again, Reserve::AlreadyHeld(TokenState::Reserved));
    assert_eq!(available(&cache, &[A]).await, vec![Some(6)], "taken once");
}

pub async fn token_moves_reserved_claimed_confirmed(cache: Arc<dyn StockCache>) {
    loaded(&cache, &[(A, 10)]).await;
    cache.reserve(token(1), &[(A, 3)], false).await.expect("reserve");
    assert_eq!(cache.claim(token(1)).await.expect("claim"), Claim::Claimed);
    assert_eq!(cache.claim(token(1)).await.expect("claim"), Claim::Claimed, "a redelivered claim is fine");
    cache.confirm(token(1), &[]).await.expect("confirm");
    cache.confirm(token(1), &[(A, 3, 2)]).await.expect("confirm twice");
    assert_eq!(cache.claim(token(1)).await.expect("claim"), Claim::Confirmed);
    // Confirmed stock belongs to a created order: a late release finds it confirmed and returns nothing.
    assert_eq!(cache.release(token(1)).await.expect("release"), Some(TokenState::Confirmed));
    assert_eq!(available(&cache, &[A]).await, vec![Some(7)]);
    assert_eq!(cache.claim(token(99)).await.expect("claim"), Claim::Missing);
}

pub async fn release_returns_stock_exactly_once(cache: Arc<dyn StockCache>) {
    loaded(&cache, &[(A, 10), (B, 10)]).await;
    cache.reserve(token(1), &[(A, 3), (B, 2)], false).await.expect("reserve");
    assert_eq!(cache.release(token(1)).await.expect("release"), Some(TokenState::Reserved));
    assert_eq!(cache.release(token(1)).await.expect("release again"), Some(TokenState::Released));
    assert_eq!(available(&cache, &[A, B]).await, vec![Some(10), Some(10)]);
    assert_eq!(cache.claim(token(1)).await.expect("claim"), Claim::Released);
    cache.confirm(token(1), &[]).await.expect("confirm after release");
    assert_eq!(cache.claim(token(1)).await.expect("claim"), Claim::Released, "a released token stays released");
}

pub async fn release_of_an_unknown_token_is_an_empty_rollback_and_blocks_a_late_reserve(cache: Arc<dyn StockCache>) {
    loaded(&cache, &[(A, 10)]).await;
    assert_eq!(cache.release(token(1)).await.expect("release"), None, "nothing to give back");
    assert_eq!(available(&cache, &[A]).await, vec![Some(10)]);
    // The reservation arrives after its release (hanging reserve): refused, nothing taken.
    let late = cache.reserve(token(1), &[(A, 4)], false).await.expect("reserve");
    assert_eq!(late, Reserve::AlreadyHeld(TokenState::Released));
    assert_eq!(available(&cache, &[A]).await, vec![Some(10)]);
}

pub async fn release_if_reserved_leaves_a_claimed_token_to_its_worker(cache: Arc<dyn StockCache>) {
    loaded(&cache, &[(A, 10)]).await;
    cache.reserve(token(1), &[(A, 3)], false).await.expect("reserve");
    cache.reserve(token(2), &[(A, 2)], false).await.expect("reserve");
    cache.claim(token(1)).await.expect("claim");
    assert_eq!(cache.release_if_reserved(token(1)).await.expect("check"), Some(TokenState::Claimed));
    assert_eq!(cache.release_if_reserved(token(2)).await.expect("check"), Some(TokenState::Reserved));
    assert_eq!(available(&cache, &[A]).await, vec![Some(7)], "only the reserved one came back");
    assert_eq!(cache.release_if_reserved(token(3)).await.expect("check"), None, "unknown: empty rollback");
    assert_eq!(
        cache.reserve(token(3), &[(A, 1)], false).await.expect("reserve"),
        Reserve::AlreadyHeld(TokenState::Released)
    );
}

pub async fn a_claimed_reservation_starts_claimed(cache: Arc<dyn StockCache>) {
    loaded(&cache, &[(A, 10)]).await;
    let worker = Token::worker(OrderNo::new(SnowflakeId(1), Uid(7)), SHOP);
    assert_eq!(cache.reserve(worker, &[(A, 3)], true).await.expect("reserve"), Reserve::Reserved);
    assert_eq!(cache.release_if_reserved(worker).await.expect("check"), Some(TokenState::Claimed));
    assert_eq!(available(&cache, &[A]).await, vec![Some(7)]);
    // The entry's token of the same order is a different reservation.
    assert_eq!(
        cache.claim(Token::entry(OrderNo::new(SnowflakeId(1), Uid(7)), SHOP)).await.expect("claim"),
        Claim::Missing
    );
}

pub async fn restock_counts_once_per_key_and_skips_loaded_versions(cache: Arc<dyn StockCache>) {
    cache.init(&[(A, level(10, 3))], &[]).await.expect("init");
    // Version 3 was loaded: this return is already part of the 10.
    cache.restock(&Restock { key: "r-3".into(), shop_id: SHOP, lines: vec![(A, 5, 3)] }).await.expect("restock");
    assert_eq!(available(&cache, &[A]).await, vec![Some(10)]);
    cache.restock(&Restock { key: "r-4".into(), shop_id: SHOP, lines: vec![(A, 5, 4)] }).await.expect("restock");
    cache
        .restock(&Restock { key: "r-4".into(), shop_id: SHOP, lines: vec![(A, 5, 4)] })
        .await
        .expect("restock redelivered");
    assert_eq!(available(&cache, &[A]).await, vec![Some(15)]);
}

pub async fn restock_of_an_unloaded_commodity_waits_for_the_load(cache: Arc<dyn StockCache>) {
    cache.restock(&Restock { key: "r-1".into(), shop_id: SHOP, lines: vec![(A, 5, 2)] }).await.expect("restock");
    assert_eq!(available(&cache, &[A]).await, vec![None], "the load will read the store, which has it");
    cache.init(&[(A, level(15, 2))], &[]).await.expect("init");
    assert_eq!(available(&cache, &[A]).await, vec![Some(15)]);
}

/// Redis lost a reservation (flushed, restarted) while its order was being created; the counter was
/// reloaded from the store meanwhile. The confirmation carries what the store took, at which version.
pub async fn confirm_of_a_lost_token_follows_the_stores_deduction_once(cache: Arc<dyn StockCache>) {
    cache.init(&[(A, level(10, 3))], &[]).await.expect("init");
    // Loaded at version 3: that deduction is part of the 10.
    cache.confirm(token(1), &[(A, 4, 3)]).await.expect("confirm");
    assert_eq!(available(&cache, &[A]).await, vec![Some(10)]);
    // Version 4 came after the load: the counter follows it, once.
    cache.confirm(token(2), &[(A, 4, 4)]).await.expect("confirm");
    cache.confirm(token(2), &[(A, 4, 4)]).await.expect("confirm redelivered");
    assert_eq!(available(&cache, &[A]).await, vec![Some(6)]);
    assert_eq!(cache.claim(token(2)).await.expect("claim"), Claim::Confirmed);
    // Without deductions a lost token stays lost (a later confirmation with them still counts).
    cache.confirm(token(3), &[]).await.expect("confirm");
    assert_eq!(cache.claim(token(3)).await.expect("claim"), Claim::Missing);
    // An empty release (the reservation check found it lost) is lost too.
    assert_eq!(cache.release(token(4)).await.expect("release"), None);
    cache.confirm(token(4), &[(A, 1, 5)]).await.expect("confirm");
    assert_eq!(available(&cache, &[A]).await, vec![Some(5)]);
    assert_eq!(cache.release(token(4)).await.expect("release"), Some(TokenState::Confirmed), "nothing back");
    // A live token was counted when it reserved: its deductions change nothing.
    assert_eq!(cache.reserve(token(5), &[(A, 2)], false).await.expect("reserve"), Reserve::Reserved);
    cache.confirm(token(5), &[(A, 2, 6)]).await.expect("confirm");
    assert_eq!(available(&cache, &[A]).await, vec![Some(3)]);
}

/// A reservation given back while its create went on, then that create confirmed: the store sold the
/// units the release returned, so the counter takes them again — once. Seen in a failover: a worker
/// claimed the token on a Redis master that died, a load made the reservation again from the order's
/// pending view, the reservation check released it (it was RESERVED again), and the worker's create
/// then confirmed on a RELEASED token: the counter stayed the order's units above the store.
pub async fn confirm_after_a_release_takes_the_stores_deduction_once(cache: Arc<dyn StockCache>) {
    let held = Held { token: token(1), lines: vec![(A, 3)], check_at_ms: Some(CHECK_AT_MS) };
    cache.init(&[(A, level(10, 1))], std::slice::from_ref(&held)).await.expect("init");
    assert_eq!(available(&cache, &[A]).await, vec![Some(7)], "made again from the pending view");
    assert_eq!(cache.release_if_reserved(token(1)).await.expect("release"), Some(TokenState::Reserved));
    assert_eq!(available(&cache, &[A]).await, vec![Some(10)]);
    cache.confirm(token(1), &[(A, 3, 2)]).await.expect("confirm");
    assert_eq!(available(&cache, &[A]).await, vec![Some(7)], "the store's deduction");
    cache.confirm(token(1), &[(A, 3, 2)]).await.expect("confirm redelivered");
    assert_eq!(available(&cache, &[A]).await, vec![Some(7)], "once");
    assert_eq!(cache.release(token(1)).await.expect("release"), Some(TokenState::Confirmed), "nothing back");
    assert_eq!(available(&cache, &[A]).await, vec![Some(7)]);
    // The same without a load: reserved, released, then the create's confirmation.
    assert_eq!(cache.reserve(token(2), &[(A, 2)], false).await.expect("reserve"), Reserve::Reserved);
    assert_eq!(cache.release(token(2)).await.expect("release"), Some(TokenState::Reserved));
    cache.confirm(token(2), &[(A, 2, 3)]).await.expect("confirm");
    assert_eq!(available(&cache, &[A]).await, vec![Some(5)]);
    // A counter loaded after the deduction counts it already: nothing more.
    assert_eq!(cache.reserve(token(3), &[(B, 1)], false).await.expect("reserve"), Reserve::NotLoaded(vec![B]));
    cache.init(&[(B, level(4, 5))], &[]).await.expect("init");
    assert_eq!(cache.reserve(token(3), &[(B, 1)], false).await.expect("reserve"), Reserve::Reserved);
    assert_eq!(cache.release(token(3)).await.expect("release"), Some(TokenState::Reserved));
    cache.confirm(token(3), &[(B, 1, 5)]).await.expect("confirm");
    assert_eq!(available(&cache, &[B]).await, vec![Some(4)], "version 5 is in the load");
}

/// A store change is counted once, whoever reports it and however late: the confirmation of a create
/// redelivered after its confirmed token expired (reported here under a token the cache does not know),
/// a restock reported again after its marker expired (here under another key), a parked change the
/// load already applied. Before, a counter remembered only its load version, and such a report was
/// applied a second time: the cache sold fewer units than the store had.
pub async fn a_counted_version_is_never_counted_again(cache: Arc<dyn StockCache>) {
    cache.init(&[(A, level(10, 1))], &[]).await.expect("init");
    assert_eq!(cache.reserve(token(1), &[(A, 3)], false).await.expect("reserve"), Reserve::Reserved);
    cache.confirm(token(1), &[(A, 3, 2)]).await.expect("confirm");
    cache.confirm(token(11), &[(A, 3, 2)]).await.expect("confirm, the token forgotten");
    assert_eq!(available(&cache, &[A]).await, vec![Some(7)]);
    // Out of order: version 4 (a return) before version 3 (a lost reservation's deduction).
    cache.restock(&Restock { key: "r-4".into(), shop_id: SHOP, lines: vec![(A, 5, 4)] }).await.expect("restock");
    cache.restock(&Restock { key: "r-4-again".into(), shop_id: SHOP, lines: vec![(A, 5, 4)] }).await.expect("restock");
    assert_eq!(available(&cache, &[A]).await, vec![Some(12)]);
    cache.confirm(token(12), &[(A, 1, 3)]).await.expect("confirm");
    cache.confirm(token(13), &[(A, 1, 3)]).await.expect("confirm, the token forgotten");
    assert_eq!(available(&cache, &[A]).await, vec![Some(11)]);
    // Parked for a counter not loaded yet (reported twice), counted by the load once, then reported again.
    cache.confirm(token(21), &[(B, 2, 3)]).await.expect("confirm");
    cache.confirm(token(22), &[(B, 2, 3)]).await.expect("confirm");
    cache.init(&[(B, level(10, 2))], &[]).await.expect("init");
    cache.confirm(token(23), &[(B, 2, 3)]).await.expect("confirm");
    assert_eq!(available(&cache, &[B]).await, vec![Some(8)]);
}

pub async fn a_lost_tokens_deduction_waits_for_the_load(cache: Arc<dyn StockCache>) {
    // A: the load read the store before the deduction (version 2) and the return (version 3).
    cache.confirm(token(1), &[(A, 4, 2)]).await.expect("confirm");
    cache.restock(&Restock { key: "r-3".into(), shop_id: SHOP, lines: vec![(A, 1, 3)] }).await.expect("restock");
    assert_eq!(available(&cache, &[A]).await, vec![None], "nothing loaded yet");
    cache.init(&[(A, level(10, 1))], &[]).await.expect("init");
    assert_eq!(available(&cache, &[A]).await, vec![Some(7)]);
    // B: the load read the store after the deduction.
    cache.confirm(token(2), &[(B, 4, 2)]).await.expect("confirm");
    cache.init(&[(B, level(6, 2))], &[]).await.expect("init");
    assert_eq!(available(&cache, &[B]).await, vec![Some(6)]);
}

pub async fn a_counter_that_sold_lost_units_again_goes_below_zero_and_back(cache: Arc<dyn StockCache>) {
    cache.init(&[(A, level(5, 1))], &[]).await.expect("init");
    // Reloaded with 5 while a lost reservation of 5 was being created: the cache sold them again.
    assert_eq!(cache.reserve(token(1), &[(A, 5)], false).await.expect("reserve"), Reserve::Reserved);
    cache.confirm(token(2), &[(A, 5, 2)]).await.expect("confirm");
    assert_eq!(available(&cache, &[A]).await, vec![Some(0)], "below zero sells nothing");
    assert_eq!(
        cache.reserve(token(3), &[(A, 1)], false).await.expect("reserve"),
        Reserve::Insufficient { commodity_id: A, available: 0 }
    );
    // The store refuses token 1's order; its release brings the counter back to the store's 0 …
    assert_eq!(cache.release(token(1)).await.expect("release"), Some(TokenState::Reserved));
    assert_eq!(available(&cache, &[A]).await, vec![Some(0)]);
    // … and it counts from there: a return of 5 makes 5, not 10.
    cache.restock(&Restock { key: "r-3".into(), shop_id: SHOP, lines: vec![(A, 5, 3)] }).await.expect("restock");
    assert_eq!(available(&cache, &[A]).await, vec![Some(5)]);
}

pub async fn racing_buyers_never_get_more_than_the_stock(cache: Arc<dyn StockCache>) {
    loaded(&cache, &[(A, 50), (B, 1_000)]).await;
    let mut buyers = Vec::new();
    for n in 0..200u64 {
        let cache = Arc::clone(&cache);
        buyers.push(tokio::spawn(async move { cache.reserve(token(n + 1), &[(B, 1), (A, 1)], false).await }));
    }
    let mut reserved = 0;
    for buyer in buyers {
        match buyer.await.expect("buyer task").expect("reserve") {
            Reserve::Reserved => reserved += 1,
            Reserve::Insufficient { commodity_id, .. } => assert_eq!(commodity_id, A),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(reserved, 50);
    assert_eq!(available(&cache, &[A, B]).await, vec![Some(0), Some(950)], "B taken only with A");
}

pub async fn shops_are_kept_apart(cache: Arc<dyn StockCache>) {
    let other = StockLevel { shop_id: OTHER_SHOP, initial: 5, available: 5, version: 1 };
    cache.init(&[(A, level(10, 1)), (C, other)], &[]).await.expect("init");
    // The same order number in two shops is two reservations (a cart split into one order per shop
    // gets distinct numbers anyway; the token names its shop).
    let in_other = Token::entry(OrderNo::new(SnowflakeId(1), Uid(7)), OTHER_SHOP);
    assert_eq!(cache.reserve(in_other, &[(C, 2)], false).await.expect("reserve"), Reserve::Reserved);
    assert_eq!(cache.reserve(token(1), &[(A, 4)], false).await.expect("reserve"), Reserve::Reserved);
    assert_eq!(available(&cache, &[A, C]).await, vec![Some(6), Some(3)]);
    assert_eq!(cache.release(in_other).await.expect("release"), Some(TokenState::Reserved));
    assert_eq!(available(&cache, &[A, C]).await, vec![Some(6), Some(5)]);
    let back = Restock { key: "other-1".into(), shop_id: OTHER_SHOP, lines: vec![(C, 1, 2)] };
    cache.restock(&back).await.expect("restock");
    assert_eq!(available(&cache, &[C]).await, vec![Some(6)]);
    assert_eq!(cache.claim(token(1)).await.expect("claim"), Claim::Claimed);
}

/// A load makes the reservations of accepted orders not created yet again (their units are not sold a
/// second time): each whose token is unknown and all of whose counters that load sets; any other whole
/// reservation is skipped. A remade reservation is a live one: its confirmation takes nothing more.
pub async fn init_makes_held_reservations_again_once(cache: Arc<dyn StockCache>) {
    let held =
        |n: u64, lines: &[(CommodityId, u32)]| Held { token: token(n), lines: lines.to_vec(), check_at_ms: None };
    // Token 9 is known already (released): not made again.
    loaded(&cache, &[(C, 1)]).await;
    cache.release(token(9)).await.expect("release");
    let first = [held(1, &[(A, 3)]), held(2, &[(A, 2), (B, 1)]), held(3, &[(A, 1), (C, 1)]), held(9, &[(A, 4)])];
    cache.init(&[(A, level(10, 1)), (B, level(5, 1))], &first).await.expect("init");
    assert_eq!(available(&cache, &[A, B, C]).await, vec![Some(5), Some(4), Some(1)], "1 and 2 held, 3 and 9 not");
    assert_eq!(cache.claim(token(1)).await.expect("claim"), Claim::Claimed);
    assert_eq!(cache.claim(token(3)).await.expect("claim"), Claim::Missing, "C was loaded before: skipped whole");
    assert_eq!(cache.claim(token(9)).await.expect("claim"), Claim::Released);
    // Counters present: a later load makes nothing again.
    cache.init(&[(A, level(10, 1))], &[held(4, &[(A, 1)])]).await.expect("init");
    assert_eq!(available(&cache, &[A]).await, vec![Some(5)]);
    assert_eq!(cache.claim(token(4)).await.expect("claim"), Claim::Missing);
    // The creation's deduction (version 2) was held back at the load: the confirmation takes nothing more.
    cache.confirm(token(1), &[(A, 3, 2)]).await.expect("confirm");
    assert_eq!(available(&cache, &[A]).await, vec![Some(5)]);
    cache.release(token(2)).await.expect("release");
    assert_eq!(available(&cache, &[A, B]).await, vec![Some(7), Some(5)], "a remade reservation gives back");
}

/// `keep_if_reserved`: RESERVED → CLAIMED (the units stay for a create published again); any other state
/// is answered and left; an unknown token is answered `None` and remembered as an empty rollback in the
/// same step, so neither a late reserve nor a load holding it for its pending view makes it again.
pub async fn keep_if_reserved_keeps_only_a_reserved_token(cache: Arc<dyn StockCache>) {
    loaded(&cache, &[(A, 10)]).await;
    assert_eq!(cache.reserve(token(1), &[(A, 2)], false).await.expect("reserve"), Reserve::Reserved);
    assert_eq!(cache.keep_if_reserved(token(1)).await.expect("keep"), Some(TokenState::Reserved));
    assert_eq!(cache.keep_if_reserved(token(1)).await.expect("keep"), Some(TokenState::Claimed), "kept once");
    assert_eq!(cache.release_if_reserved(token(1)).await.expect("release"), Some(TokenState::Claimed));
    assert_eq!(available(&cache, &[A]).await, vec![Some(8)], "still held");
    assert_eq!(cache.keep_if_reserved(token(2)).await.expect("keep"), None);
    assert_eq!(
        cache.reserve(token(2), &[(A, 1)], false).await.expect("reserve"),
        Reserve::AlreadyHeld(TokenState::Released),
        "a late reserve is refused"
    );
    assert_eq!(cache.keep_if_reserved(token(2)).await.expect("keep"), Some(TokenState::Released));
    // A load that would hold token 3 for its pending view, after the keep found it unknown: not made.
    assert_eq!(cache.keep_if_reserved(token(3)).await.expect("keep"), None);
    let held = Held { token: token(3), lines: vec![(B, 2)], check_at_ms: Some(CHECK_AT_MS) };
    cache.init(&[(B, level(5, 1))], &[held]).await.expect("init");
    assert_eq!(available(&cache, &[A, B]).await, vec![Some(8), Some(5)], "nothing held for token 3");
    assert_eq!(cache.claim(token(3)).await.expect("claim"), Claim::Released);
}

/// The reservation checks a cache keeps (remark 1): armed by a reserve that reserves, in the same step;
/// handed out when due, only those of the shops asked about, at most `max`; handed out again at the retry
/// time until done; a refused or repeated reserve arms nothing. A cache that does not keep checks refuses
/// to reserve with one.
pub async fn a_kept_check_is_armed_with_its_reservation_and_handed_out_until_done(cache: Arc<dyn StockCache>) {
    let other = |n: u64| Token::entry(OrderNo::new(SnowflakeId(n), Uid(7)), OTHER_SHOP);
    loaded(&cache, &[(A, 10)]).await;
    cache
        .init(&[(C, StockLevel { shop_id: OTHER_SHOP, initial: 5, available: 5, version: 1 })], &[])
        .await
        .expect("init");
    if !cache.keeps_checks() {
        assert!(cache.reserve_checked(token(1), &[(A, 2)], CHECK_AT_MS).await.is_err());
        assert_eq!(available(&cache, &[A]).await, vec![Some(10)], "nothing reserved");
        return;
    }
    let reserve = |t: Token, lines: Vec<(CommodityId, u32)>, at_ms: u64| {
        let cache = Arc::clone(&cache);
        async move { cache.reserve_checked(t, &lines, at_ms).await.expect("reserve") }
    };
    assert_eq!(reserve(token(1), vec![(A, 2)], CHECK_AT_MS).await, Reserve::Reserved);
    assert_eq!(available(&cache, &[A]).await, vec![Some(8)]);
    assert!(matches!(reserve(token(2), vec![(A, 20)], CHECK_AT_MS).await, Reserve::Insufficient { .. }));
    // A retry of the first: nothing more held, its check not moved.
    assert_eq!(reserve(token(1), vec![(A, 2)], CHECK_AT_MS + 5_000).await, Reserve::AlreadyHeld(TokenState::Reserved));
    assert_eq!(reserve(other(3), vec![(C, 1)], CHECK_AT_MS).await, Reserve::Reserved);

    let due = |shops: Vec<ShopId>, now_ms: u64, max: usize| {
        let cache = Arc::clone(&cache);
        async move { cache.due_checks(&shops, now_ms, now_ms + 1_000, max).await.expect("due checks") }
    };
    assert_eq!(due(vec![SHOP, OTHER_SHOP], CHECK_AT_MS - 1, 10).await, Vec::<Token>::new(), "not due yet");
    assert_eq!(due(vec![SHOP], CHECK_AT_MS, 10).await, vec![token(1)], "the refused reserve armed nothing");
    assert_eq!(due(vec![SHOP], CHECK_AT_MS + 500, 10).await, Vec::<Token>::new(), "handed out: back at the retry");
    assert_eq!(due(vec![SHOP], CHECK_AT_MS + 1_000, 10).await, vec![token(1)], "not done: handed out again");
    // Done as handed out (moved to the retry time, CHECK_AT_MS + 2 000): forgotten.
    cache.checks_done(&[token(1)], CHECK_AT_MS + 2_000).await.expect("done");
    assert_eq!(due(vec![SHOP], CHECK_AT_MS + 10_000, 10).await, Vec::<Token>::new(), "done: forgotten");
    assert_eq!(due(vec![OTHER_SHOP], CHECK_AT_MS + 10_000, 10).await, vec![other(3)], "the other shop's, asked there");

    // At most `max`, the earliest first.
    for n in 4..=6 {
        assert_eq!(reserve(token(n), vec![(A, 1)], CHECK_AT_MS + 20_000 + n).await, Reserve::Reserved);
    }
    assert_eq!(due(vec![SHOP], CHECK_AT_MS + 30_000, 2).await, vec![token(4), token(5)]);
    assert_eq!(due(vec![SHOP], CHECK_AT_MS + 30_000, 2).await, vec![token(6)]);
    // A check changes no stock by itself.
    assert_eq!(available(&cache, &[A, C]).await, vec![Some(5), Some(4)]);
}

/// A confirmation settles its reservation, and with it forgets its check; a release does not (its check
/// still has a pending view to look after, if any).
pub async fn a_confirmation_forgets_its_kept_check(cache: Arc<dyn StockCache>) {
    if !cache.keeps_checks() {
        return;
    }
    loaded(&cache, &[(A, 10)]).await;
    for n in 1..=2 {
        assert_eq!(cache.reserve_checked(token(n), &[(A, 1)], CHECK_AT_MS).await.expect("reserve"), Reserve::Reserved);
    }
    assert_eq!(cache.claim(token(1)).await.expect("claim"), Claim::Claimed);
    cache.confirm(token(1), &[(A, 1, 2)]).await.expect("confirm");
    assert_eq!(cache.release(token(2)).await.expect("release"), Some(TokenState::Reserved));
    let due = cache.due_checks(&[SHOP], CHECK_AT_MS, CHECK_AT_MS + 1_000, 10).await.expect("due");
    assert_eq!(due, vec![token(2)]);
}

/// A load that makes a reservation again arms its check at the time it is given, so a reservation the
/// cache lost and remade is looked after like the entry's; one it skips arms nothing.
pub async fn a_load_arms_the_checks_of_the_reservations_it_makes_again(cache: Arc<dyn StockCache>) {
    if !cache.keeps_checks() {
        return;
    }
    loaded(&cache, &[(C, 1)]).await;
    let held = |n: u64, lines: &[(CommodityId, u32)], check_at_ms: Option<u64>| Held {
        token: token(n),
        lines: lines.to_vec(),
        check_at_ms,
    };
    let made = [
        held(1, &[(A, 1)], Some(CHECK_AT_MS)),
        held(2, &[(A, 1)], Some(CHECK_AT_MS + 100)),
        held(3, &[(C, 1)], Some(CHECK_AT_MS)),
        held(4, &[(A, 1)], None),
    ];
    cache.init(&[(A, level(10, 1))], &made).await.expect("init");
    assert_eq!(available(&cache, &[A]).await, vec![Some(7)], "1, 2 and 4 made again");
    assert_eq!(cache.checks_armed(&[SHOP]).await.expect("armed"), 2, "token 4 made again without a check");
    let due = cache.due_checks(&[SHOP], CHECK_AT_MS, CHECK_AT_MS + 1_000, 10).await.expect("due");
    assert_eq!(due, vec![token(1)], "token 2 not due yet; token 3 skipped (C was loaded before)");
    let due = cache.due_checks(&[SHOP], CHECK_AT_MS + 100, CHECK_AT_MS + 1_000, 10).await.expect("due");
    assert_eq!(due, vec![token(2)]);
}

/// A check is forgotten by `checks_done` only as it was handed out: a worker slower than the retry time
/// (the check handed out again, to another worker) does not forget it under the second one, and neither
/// would one armed again by a reload meanwhile. Armed checks are counted per shop.
pub async fn a_check_handed_out_again_is_not_forgotten_by_its_first_taker(cache: Arc<dyn StockCache>) {
    if !cache.keeps_checks() {
        return;
    }
    loaded(&cache, &[(A, 10)]).await;
    for n in 1..=2 {
        assert_eq!(cache.reserve_checked(token(n), &[(A, 1)], CHECK_AT_MS).await.expect("reserve"), Reserve::Reserved);
    }
    assert_eq!(cache.checks_armed(&[SHOP]).await.expect("armed"), 2);
    assert_eq!(cache.checks_armed(&[OTHER_SHOP]).await.expect("armed"), 0);
    let first_retry_ms = CHECK_AT_MS + 1_000;
    let due = cache.due_checks(&[SHOP], CHECK_AT_MS, first_retry_ms, 10).await.expect("due");
    assert_eq!(due, vec![token(1), token(2)]);
    // The first taker is slow: token 1 is handed out again at its retry time, to another worker.
    let second_retry_ms = first_retry_ms + 1_000;
    let again = cache.due_checks(&[SHOP], first_retry_ms, second_retry_ms, 1).await.expect("due");
    assert_eq!(again, vec![token(1)], "the earliest first, at most one");
    cache.checks_done(&[token(1), token(2)], first_retry_ms).await.expect("done");
    assert_eq!(cache.checks_armed(&[SHOP]).await.expect("armed"), 1, "token 1 is the second taker's now");
    cache.checks_done(&[token(1)], second_retry_ms).await.expect("done");
    assert_eq!(cache.checks_armed(&[SHOP]).await.expect("armed"), 0);
}
