//! Losing the stock cache (Redis keeps nothing on disk: FLUSHALL, a restart) while orders are in flight.
//! Counters reload from the store; what the store changes while a counter is reloading — a creation
//! whose reservation was lost, a return — reaches the counter exactly once, so once quiet the cache
//! holds what the store holds (I2's "cache = store").

mod common;

use common::*;
use orderly_app::{Actor, PlaceError};
use orderly_domain::{CatalogEntry, CommodityId, Money, OrderState, ShopId};

#[tokio::test]
async fn a_cache_lost_between_claim_and_commit_is_corrected_by_the_confirmation() {
    let mut h = harness(10).await;
    let cache = LosableCache::install(&mut h.orderly, &mut h.ports);
    let order_nos = h.orderly.place_orders(&body(1, false, &[(1, 3)]), None).await.expect("accepted");
    assert_eq!(stock(&h.ports, 1).await, (10, Some(7)));

    // The worker claims the reservation, then the cache is lost and a buyer's request reloads the
    // counter from the store (10: the creation has not committed yet), then the creation commits (7).
    cache.lose_at_next_claim();
    h.orderly.drain().await.expect("drain");
    assert_eq!(state(&h.ports, order_nos[0]).await, OrderState::ToPay);
    assert_eq!(stock(&h.ports, 1).await, (7, Some(7)), "the confirmation carried the deduction");

    // A redelivered creation, and the reservation check, change nothing more.
    let mut copy = order(&h.ports, order_nos[0]).await;
    copy.state = OrderState::Pending;
    let message = orderly_app::model::Outgoing {
        message: orderly_app::model::Message::CreateOrder(Box::new(copy)),
        deliver_at_ms: T0_MS,
    };
    h.ports.bus.publish(vec![message]).await.expect("publish");
    settle_and_audit(&h.orderly, &h.clock).await;
    // Never paid: its timeout closed it and everything came back, to both.
    assert_eq!(stock(&h.ports, 1).await, (10, Some(10)));
}

/// Accepted orders whose reservations died with the cache keep their units: the reload makes their
/// reservations again from their pending views, so a later cart is answered sold out instead of being
/// sold the same units and the accepted order rejected.
#[tokio::test]
async fn accepted_orders_keep_their_units_across_a_loss() {
    let mut h = harness(5).await;
    let cache = LosableCache::install(&mut h.orderly, &mut h.ports);
    let first = h.orderly.place_orders(&body(1, false, &[(1, 5)]), None).await.expect("accepted");
    cache.lose();
    let later = h.orderly.place_orders(&body(2, false, &[(1, 1)]), None).await;
    assert!(matches!(later, Err(PlaceError::SoldOut { .. })), "{later:?}");
    h.orderly.drain().await.expect("drain");
    assert_eq!(state(&h.ports, first[0]).await, OrderState::ToPay, "created, not rejected");
    assert_eq!(stock(&h.ports, 1).await, (0, Some(0)));
    settle_and_audit(&h.orderly, &h.clock).await;
}

/// The cache is lost, and reloaded (by another process, or another order of the worker's batch) between
/// the worker's claim, which found the token missing, and its look at the counters: the reload made the
/// order's reservation again, so the worker claims that one. Reserving afresh instead would hold the
/// units twice — with none to spare, the accepted order would be rejected while its own units waited.
#[tokio::test]
async fn a_reservation_remade_after_its_claim_found_it_missing_is_claimed() {
    let mut h = harness(5).await;
    let cache = LosableCache::install(&mut h.orderly, &mut h.ports);
    let accepted = h.orderly.place_orders(&body(1, false, &[(1, 5)]), None).await.expect("accepted");
    cache.lose();
    cache.reload_at_next_missing_claim();
    h.orderly.drain().await.expect("drain");
    assert_eq!(state(&h.ports, accepted[0]).await, OrderState::ToPay, "created on its remade reservation");
    assert_eq!(stock(&h.ports, 1).await, (0, Some(0)));
    settle_and_audit(&h.orderly, &h.clock).await;
}

/// An order whose reservation died with the cache, and whose units another buyer took meanwhile, is
/// rejected for the commodity that ran out — not for its first line, which had stock to spare.
#[tokio::test]
async fn an_order_rejected_after_a_loss_names_the_commodity_that_ran_out() {
    let mut h = harness(5).await;
    let same_shop =
        CatalogEntry { commodity_id: CommodityId(3), shop_id: ShopId(100_001), unit_price: Money::from_cents(2999) };
    h.orderly.load_catalog(&[same_shop], &[(CommodityId(3), 5)]).await.expect("catalog");
    let cache = LosableCache::install(&mut h.orderly, &mut h.ports);
    // One order of two lines (both in shop 100001): one unit of 1, all five of 3.
    let mut two_lines = body(1, false, &[(1, 1), (1, 5)]);
    two_lines.commodity_details[1].commodity_id = CommodityId(3);
    let first = h.orderly.place_orders(&two_lines, None).await.expect("accepted");
    assert_eq!(first.len(), 1, "one shop, one order");
    // The cache is lost before the worker claims, and the counters come back without the first order's
    // reservation (a load that did not see its view: written after the load read, or lost with an
    // asynchronous commit); another buyer then takes all of 3 (5: the first order is not created yet).
    cache.lose();
    let levels = h.ports.store.all_stock().await.expect("stock");
    h.ports.cache.init(&levels, &[]).await.expect("counters without the held reservation");
    let mut all_of_three = body(2, false, &[(1, 5)]);
    all_of_three.commodity_details[0].commodity_id = CommodityId(3);
    let second = h.orderly.place_orders(&all_of_three, None).await.expect("accepted");
    h.orderly.drain().await.expect("drain");
    let rejected = order(&h.ports, first[0]).await;
    assert_eq!((rejected.state, rejected.rejected_for), (OrderState::Rejected, Some(CommodityId(3))));
    assert_eq!(state(&h.ports, second[0]).await, OrderState::ToPay);
    settle_and_audit(&h.orderly, &h.clock).await;
}

#[tokio::test]
async fn a_return_while_a_counter_reloads_is_kept_for_the_load() {
    let mut h = harness(10).await;
    let cache = LosableCache::install(&mut h.orderly, &mut h.ports);
    let order_nos = h.orderly.place_orders(&body(1, false, &[(1, 3)]), None).await.expect("accepted");
    h.orderly.drain().await.expect("drain");
    assert_eq!(stock(&h.ports, 1).await, (7, Some(7)));

    // The cache is lost; a reload reads the store (7) …
    cache.lose();
    let read = h.ports.store.stock(&[CommodityId(1)]).await.expect("store")[0].expect("stocked");
    // … the buyer cancels and the relay tells the cache, whose counter is not there yet …
    h.orderly.cancel(Actor::Buyer(orderly_domain::Uid(1)), order_nos[0]).await.expect("cancelled");
    h.orderly.drain().await.expect("drain");
    assert_eq!(stock(&h.ports, 1).await, (10, None));
    // … then the reload lands with what it read: the return is added to it.
    h.ports.cache.init(&[(CommodityId(1), read)], &[]).await.expect("init");
    assert_eq!(stock(&h.ports, 1).await, (10, Some(10)));
    settle_and_audit(&h.orderly, &h.clock).await;
}

#[tokio::test]
async fn orders_accepted_before_a_loss_finish_and_leave_the_cache_equal_to_the_store() {
    let mut h = harness(50).await;
    let cache = LosableCache::install(&mut h.orderly, &mut h.ports);
    let mut accepted = Vec::new();
    for uid in 1..=10 {
        accepted.extend(h.orderly.place_orders(&body(uid, uid % 2 == 0, &[(1, 2), (2, 1)]), None).await.expect("ok"));
    }
    cache.lose();
    // After the loss: new buyers reload the counters; the accepted orders' reservations are gone, so
    // their workers reserve again from what the store holds.
    for uid in 11..=20 {
        accepted.extend(h.orderly.place_orders(&body(uid, false, &[(1, 1)]), None).await.expect("ok"));
    }
    cache.lose_at_next_claim();
    settle_and_audit(&h.orderly, &h.clock).await;
    for order_no in accepted {
        let state = state(&h.ports, order_no).await;
        assert!(matches!(state, OrderState::Paid | OrderState::Closed), "{order_no} {state:?}");
    }
    let (store, cache) = stock(&h.ports, 1).await;
    assert_eq!(Some(store), cache);
}

/// A flush racing every load (Redis emptied again between the load and the reserve): the entry answers
/// "unavailable", never an internal error or "sold out", and a queued create waits for the cache instead
/// of ending `rejected` while its stock is there.
#[tokio::test]
async fn a_cache_emptied_again_after_each_load_is_unavailable_not_out_of_stock() {
    let Harness { mut orderly, mut ports, clock, .. } = harness(10).await;
    let cache = LosableCache::install(&mut orderly, &mut ports);
    cache.lose();
    cache.lose_after_loads(usize::MAX);
    let answer = orderly.place_orders(&body(1, false, &[(1, 1)]), None).await;
    assert!(matches!(answer, Err(orderly_app::PlaceError::Unavailable(_))), "{answer:?}");

    // Accepted while the cache held; then the cache is lost before the worker and keeps being emptied.
    cache.lose_after_loads(0);
    let accepted = orderly.place_orders(&body(2, false, &[(1, 2)]), None).await.expect("accepted");
    cache.lose();
    cache.lose_after_loads(usize::MAX);
    let _ = orderly.drain().await;
    assert_eq!(state(&ports, accepted[0]).await, OrderState::Pending, "waits; not rejected");
    cache.lose_after_loads(0);
    clock.advance_ms(orderly.config().redelivery_delay_ms_max);
    orderly.drain().await.expect("workers run");
    assert_eq!(state(&ports, accepted[0]).await, OrderState::ToPay);
    settle_and_audit(&orderly, &clock).await;
}

/// A pending view left with neither its create nor a reservation check — written after a lost cache's
/// reload by an entry that then stopped before publishing, the check the cache kept lost with the cache —
/// is found by the workers' backstop once it is five minutes old: its create is published again and the
/// order is created (no view stays `pending` for ever), not before.
#[tokio::test]
async fn a_pending_view_left_without_create_or_check_is_created_by_the_backstop() {
    let h = harness(10).await;
    let placed = h.orderly.place_orders(&body(1, false, &[(1, 1)]), None).await.expect("accepted")[0];
    h.orderly.drain().await.expect("drain");
    let mut orphan = order(&h.ports, placed).await;
    orphan.order_no = orderly_domain::OrderNo::new(orderly_domain::SnowflakeId(12_345), orphan.buyer);
    orphan.state = OrderState::Pending;
    orphan.token_generation = None;
    orphan.stock_versions = Vec::new();
    orphan.created_ms = orderly_app::Clock::now_ms(&*h.ports.clock);
    h.ports.store.insert_pending(std::slice::from_ref(&orphan)).await.expect("the view alone");

    h.clock.advance_ms(4 * 60_000);
    h.orderly.drain().await.expect("drain");
    assert_eq!(state(&h.ports, orphan.order_no).await, OrderState::Pending, "not five minutes old yet");
    assert_eq!(stock(&h.ports, 1).await, (9, Some(9)));
    h.clock.advance_ms(2 * 60_000);
    h.orderly.drain().await.expect("drain");
    assert_eq!(state(&h.ports, orphan.order_no).await, OrderState::ToPay, "created by the backstop");
    assert_eq!(stock(&h.ports, 1).await, (8, Some(8)));
    settle_and_audit(&h.orderly, &h.clock).await;
}
