//! The `Store` contract suite against the embedded LSM store.

use std::sync::Arc;

use orderly_app::Store;
use orderly_app::ports::PaymentResult;
use orderly_contract::store::T0_MS;
use orderly_local::{Durability, LocalDb, LocalStore};

orderly_contract::store_contract!(|| async {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = LocalDb::open(dir.path(), Durability::Os).expect("db");
    (Arc::new(LocalStore::new(db).expect("store")) as Arc<dyn Store>, dir)
});

/// Opens the store on `dir` once the last handles of an earlier one are gone: the database locks its
/// directory until its group commit has seen them go, and opening answers "locked" meanwhile.
async fn reopened(dir: &std::path::Path) -> Arc<dyn Store> {
    for _ in 0..100_000 {
        if let Ok(db) = LocalDb::open(dir, Durability::Os) {
            return Arc::new(LocalStore::new(db).expect("store"));
        }
        tokio::task::yield_now().await;
    }
    panic!("{} stayed locked", dir.display());
}

/// The store counts the payments without an answer as it enters and settles them (walking the safe-pay
/// keyspace, tombstones and all, took 30 ms under load): a reopened store counts what its set holds.
#[tokio::test]
async fn payments_without_an_answer_are_counted_again_when_the_store_opens() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = reopened(dir.path()).await;
    let paying = orderly_contract::store::orders_paying(&store, 3).await;
    let settled = PaymentResult::Succeeded { payment_id: "pay-1".into() };
    store.finish_payment(paying[0], settled, T0_MS + 10).await.expect("io").expect("allowed");
    assert_eq!(store.payments_pending().await.expect("count"), 2);
    drop(store);
    let store = reopened(dir.path()).await;
    assert_eq!(store.payments_pending().await.expect("count"), 2, "counted again at open");
    let declined = PaymentResult::Declined { reason: "insufficient funds".into() };
    store.finish_payment(paying[1], declined, T0_MS + 20).await.expect("io").expect("allowed");
    assert_eq!(store.payments_pending().await.expect("count"), 1);
}
