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

async fn fresh_store() -> (Arc<dyn Store>, ()) {
    let mut bytes = [0u8; 8];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).expect("randomness");
    let schema = format!("orderly_test_{}", u64::from_le_bytes(bytes));
    let options = PgConnectOptions::from_str(&url()).expect("a database URL");
    let admin =
        sqlx::PgPool::connect_with(options.clone()).await.expect("PostgreSQL is up (CI starts it; see .ci/run)");
    // The name is ours (digits after a fixed prefix): nothing to inject.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&admin).await.expect("schema");
    admin.close().await;
    let store =
        PgStore::connect(options.options([("search_path", schema.as_str())]), 4, &orderly_postgres::Primary::new())
            .await
            .expect("store");
    (Arc::new(store) as Arc<dyn Store>, ())
}

orderly_contract::store_contract!(fresh_store);
