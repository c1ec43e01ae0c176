//! The catalog entries each process keeps (`orderly_app::catalog`): read once and kept while the store's
//! catalog version stays, so the entry's price check costs no store read per cart; a price change made
//! through another process applies here within `catalog_cache_ms`.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use orderly_app::{FlowConfig, Orderly, PlaceError};
use orderly_domain::{CatalogEntry, CommodityId, Money, ShopId};

const PERIOD_MS: u64 = 1_000;

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

    let dearer =
        CatalogEntry { commodity_id: CommodityId(1), shop_id: ShopId(100_001), unit_price: Money::from_cents(3100) };
    other.load_catalog(&[dearer], &[]).await.expect("price changed");
    // Within the period this process may still price by its copy; past it, it must not.
    h.clock.advance_ms(PERIOD_MS);
    let refused = h.orderly.place_orders(&body(11, false, &[(1, 1)]), None).await;
    assert!(matches!(refused, Err(PlaceError::Cart(_))), "the old price refused: {refused:?}");
    assert_eq!(reads(), (2, 6), "the version changed: the entry read again");
    let known = h.orderly.commodity(CommodityId(1)).await.expect("read").expect("known");
    assert_eq!(known.0.unit_price, Money::from_cents(3100));
    assert_eq!(reads(), (2, 6));
}

#[tokio::test]
async fn a_step_of_the_wall_clock_neither_keeps_the_version_longer_nor_drops_it_early() {
    let mut h = harness(100).await;
    let store = FaultyStore::install(&mut h.orderly, &mut h.ports);
    h.orderly.commodity(CommodityId(1)).await.expect("read");
    assert_eq!(store.catalog_version_reads.load(Ordering::SeqCst), 1);
    h.clock.step_wall_ms(-3_600_000);
    h.clock.advance_ms(PERIOD_MS);
    h.orderly.commodity(CommodityId(1)).await.expect("read");
    assert_eq!(store.catalog_version_reads.load(Ordering::SeqCst), 2, "a period passed, whatever the wall clock says");
    h.clock.step_wall_ms(3_600_000);
    h.orderly.commodity(CommodityId(1)).await.expect("read");
    assert_eq!(store.catalog_version_reads.load(Ordering::SeqCst), 2, "nor does a step forward end the period");
}

#[tokio::test]
async fn callers_that_waited_for_a_version_read_that_failed_answer_with_it_without_reading_again() {
    let mut h = harness(100).await;
    let store = FaultyStore::install(&mut h.orderly, &mut h.ports);
    store.catalog_version_hangs.store(true, Ordering::SeqCst);
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let orderly = h.orderly.clone();
            tokio::spawn(async move { orderly.commodity(CommodityId(1)).await })
        })
        .collect();
    // The first read waits on its time limit; the other callers wait for its turn.
    for _ in 0..1_000 {
        tokio::task::yield_now().await;
    }
    assert_eq!((h.clock.sleepers(), store.catalog_version_reads.load(Ordering::SeqCst)), (1, 1));
    h.clock.advance_ms(h.orderly.config().entry_call_timeout_ms);
    for _ in 0..1_000 {
        if calls.iter().all(|call| call.is_finished()) {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(calls.iter().all(|call| call.is_finished()), "a caller read the version again and waits on it");
    for call in calls {
        assert!(call.await.expect("ran").is_err(), "the store did not answer: unavailable");
    }
    assert_eq!(store.catalog_version_reads.load(Ordering::SeqCst), 1);
}
