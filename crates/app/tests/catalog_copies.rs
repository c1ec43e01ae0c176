//! The catalog entries each process keeps (`orderly_app::catalog`): read once and kept while the store's
//! catalog version stays, so the entry's price check costs no store read per cart; a price change made
//! through another process applies here within `catalog_cache_ms` (and one store round trip).

mod common;

use std::sync::atomic::Ordering;

use common::*;
use orderly_app::{FlowConfig, Orderly, PlaceError};
use orderly_domain::{CatalogEntry, CommodityId, Money, ShopId};
use tokio::task::JoinHandle;

const PERIOD_MS: u64 = 1_000;

fn dearer() -> CatalogEntry {
    CatalogEntry { commodity_id: CommodityId(1), shop_id: ShopId(100_001), unit_price: Money::from_cents(3100) }
}

#[tokio::test]
async fn entries_are_read_once_and_a_price_change_elsewhere_applies_within_the_period() {
    let mut h = harness(100).await;
    assert_eq!(h.orderly.config().catalog_cache_ms, PERIOD_MS, "the default this test is written for");
    // Another process on the same store, with catalog copies of its own (its reads are not counted).
    let other = Orderly::new(h.ports.clone(), FlowConfig::default());
    let store = FaultyStore::install(&mut h.orderly, &mut h.ports);
    let reads = || (store.commodity_reads.load(Ordering::SeqCst), store.catalog_version_reads.load(Ordering::SeqCst));

    for uid in 1..=10 {
        h.orderly.place_orders(&body(uid, false, &[(1, 1)]), None).await.expect("accepted at the catalog's price");
        h.clock.advance_ms(PERIOD_MS / 2);
    }
    assert_eq!(reads(), (1, 5), "the entry read once over five periods; the version once a period");
    h.orderly.place_orders(&body(11, false, &[(1, 1)]), None).await.expect("accepted");
    assert_eq!(reads(), (1, 6), "a version read just now");

    // Changed right after this process read the version: it may price by its copy for the period, no longer.
    other.load_catalog(&[dearer()], &[]).await.expect("price changed");
    h.clock.advance_ms(PERIOD_MS - 1);
    h.orderly.place_orders(&body(12, false, &[(1, 1)]), None).await.expect("the copy, within the period");
    h.clock.advance_ms(1);
    let refused = h.orderly.place_orders(&body(13, false, &[(1, 1)]), None).await;
    assert!(matches!(refused, Err(PlaceError::Cart(_))), "the old price refused: {refused:?}");
    assert_eq!(reads(), (2, 7), "the version changed: the entry read again");
    let known = h.orderly.commodity(CommodityId(1)).await.expect("read").expect("known");
    assert_eq!(known.0.unit_price, Money::from_cents(3100));
    assert_eq!(reads(), (2, 7));
}

#[tokio::test]
async fn a_step_of_the_wall_clock_neither_keeps_the_version_longer_nor_drops_it_early() {
    let mut h = harness(100).await;
    let store = FaultyStore::install(&mut h.orderly, &mut h.ports);
    let version_reads = || store.catalog_version_reads.load(Ordering::SeqCst);
    h.orderly.commodity(CommodityId(1)).await.expect("read");
    assert_eq!(version_reads(), 1);
    // Steps back, one within the tolerance the clock allows for drift and one far beyond it.
    for step_ms in [-900, -3_600_000] {
        h.clock.step_wall_ms(step_ms);
        h.clock.advance_ms(PERIOD_MS);
        let before = version_reads();
        h.orderly.commodity(CommodityId(1)).await.expect("read");
        assert_eq!(version_reads(), before + 1, "a period passed after a step of {step_ms} ms");
    }
    for step_ms in [900, 3_600_000] {
        h.clock.step_wall_ms(step_ms);
        let before = version_reads();
        h.orderly.commodity(CommodityId(1)).await.expect("read");
        assert_eq!(version_reads(), before, "no time passed, whatever a step of {step_ms} ms says");
    }
}

/// Lets spawned calls run until each waits (for the version read held, or for its turn).
async fn settle() {
    for _ in 0..1_000 {
        tokio::task::yield_now().await;
    }
}

async fn finished<T>(calls: Vec<JoinHandle<T>>) -> Vec<T> {
    settle().await;
    assert!(calls.iter().all(JoinHandle::is_finished), "a caller read the version again and waits on it");
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.expect("ran"));
    }
    answers
}

fn callers(h: &Harness, count: usize) -> Vec<JoinHandle<Result<(), orderly_app::PortError>>> {
    (0..count)
        .map(|_| {
            let orderly = h.orderly.clone();
            tokio::spawn(async move { orderly.commodity(CommodityId(1)).await.map(drop) })
        })
        .collect()
}

#[tokio::test]
async fn callers_that_waited_for_a_version_read_that_failed_answer_with_it_without_reading_again() {
    let mut h = harness(100).await;
    let store = FaultyStore::install(&mut h.orderly, &mut h.ports);
    store.catalog_version_held.store(true, Ordering::SeqCst);
    store.catalog_version_fails.store(true, Ordering::SeqCst);
    let calls = callers(&h, 5);
    settle().await;
    store.catalog_version_release.notify_one();
    let answers = finished(calls).await;
    assert!(answers.iter().all(Result::is_err), "the store did not answer: unavailable");
    assert_eq!(store.catalog_version_reads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn callers_that_waited_for_a_slow_version_read_take_it_when_it_began_before_they_came() {
    let mut h = harness(100).await;
    let store = FaultyStore::install(&mut h.orderly, &mut h.ports);
    let mut config = (*h.orderly.config()).clone();
    config.entry_call_timeout_ms = 10 * PERIOD_MS;
    h.orderly.set_config(config);
    store.catalog_version_held.store(true, Ordering::SeqCst);
    let calls = callers(&h, 5);
    settle().await;
    // The read outlasts the period: done, it is already stale for a caller arriving now, not for these.
    h.clock.advance_ms(2 * PERIOD_MS);
    store.catalog_version_release.notify_one();
    let answers = finished(calls).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert_eq!(store.catalog_version_reads.load(Ordering::SeqCst), 1);
}
