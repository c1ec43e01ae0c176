//! The `Store` contract suite against PostgreSQL (`TEST_DATABASE_URL`, default the local server's
//! `postgres` database), each case in a fresh schema of its own, migrated from scratch.

mod common;

use std::sync::Arc;

use orderly_app::Store;

async fn fresh_store() -> (Arc<dyn Store>, ()) {
    (Arc::new(common::fresh().await.0) as Arc<dyn Store>, ())
}

orderly_contract::store_contract!(fresh_store);

/// A catalog write made around the store (an older build's during an upgrade, an operator's `UPDATE`)
/// changes the version too, so the processes keeping copies read them again.
#[tokio::test]
async fn a_catalog_write_made_around_the_store_changes_the_version() {
    let (store, pool) = common::fresh().await;
    let entry = orderly_domain::CatalogEntry {
        commodity_id: orderly_domain::CommodityId(1),
        shop_id: orderly_domain::ShopId(7),
        unit_price: orderly_domain::Money::from_cents(100),
    };
    store.put_commodities(&[entry]).await.expect("catalog");
    let before = store.catalog_version().await.expect("version");
    sqlx::query("UPDATE commodities SET unit_price_cents = 200 WHERE commodity_id = 1")
        .execute(&pool)
        .await
        .expect("update");
    assert_ne!(store.catalog_version().await.expect("version"), before);
}
