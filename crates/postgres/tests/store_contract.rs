//! The `Store` contract suite against PostgreSQL (`TEST_DATABASE_URL`, default the local server's
//! `postgres` database), each case in a fresh schema of its own, migrated from scratch.

use std::str::FromStr;
use std::sync::Arc;

use orderly_app::Store;
use orderly_postgres::PgStore;
use rand::TryRngCore;
use sqlx::postgres::PgConnectOptions;

fn url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh schema: the connection options that use it.
async fn fresh_schema() -> PgConnectOptions {
    let mut bytes = [0u8; 8];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).expect("randomness");
    let schema = format!("orderly_test_{}", u64::from_le_bytes(bytes));
    let options = PgConnectOptions::from_str(&url()).expect("a database URL");
    let admin =
        sqlx::PgPool::connect_with(options.clone()).await.expect("PostgreSQL is up (CI starts it; see .ci/run)");
    // The name is ours (digits after a fixed prefix): nothing to inject.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&admin).await.expect("schema");
    admin.close().await;
    options.options([("search_path", schema.as_str())])
}

async fn fresh_store() -> (Arc<dyn Store>, ()) {
    let store = PgStore::connect(fresh_schema().await, 4, &orderly_postgres::Primary::new()).await.expect("store");
    (Arc::new(store) as Arc<dyn Store>, ())
}

orderly_contract::store_contract!(fresh_store);

/// A catalog write made around the store (an older build's during an upgrade, an operator's `UPDATE`)
/// changes the version too, so the processes keeping copies read them again.
#[tokio::test]
async fn a_catalog_write_made_around_the_store_changes_the_version() {
    let options = fresh_schema().await;
    let store = PgStore::connect(options.clone(), 4, &orderly_postgres::Primary::new()).await.expect("store");
    let entry = orderly_domain::CatalogEntry {
        commodity_id: orderly_domain::CommodityId(1),
        shop_id: orderly_domain::ShopId(7),
        unit_price: orderly_domain::Money::from_cents(100),
    };
    store.put_commodities(&[entry]).await.expect("catalog");
    let before = store.catalog_version().await.expect("version");
    let pool = sqlx::PgPool::connect_with(options).await.expect("connect");
    sqlx::query("UPDATE commodities SET unit_price_cents = 200 WHERE commodity_id = 1")
        .execute(&pool)
        .await
        .expect("update");
    assert_ne!(store.catalog_version().await.expect("version"), before);
}
