//! Shared by the PostgreSQL tests: the server (`TEST_DATABASE_URL`, default the local server's `postgres`
//! database), and a fresh schema for each case, migrated from scratch.
#![allow(dead_code)]

use std::str::FromStr;

use orderly_postgres::PgStore;
use rand::TryRngCore;
use sqlx::postgres::PgConnectOptions;

pub fn url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A schema name no other case uses: `prefix` and random digits.
pub fn schema_name(prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).expect("randomness");
    format!("{prefix}_{}", u64::from_le_bytes(bytes))
}

/// A store in a fresh schema, and a plain pool on the same schema for the test's own statements.
pub async fn fresh() -> (PgStore, sqlx::PgPool) {
    fresh_with(4).await
}

/// [`fresh`] with a store of at most `connections` connections.
pub async fn fresh_with(connections: u32) -> (PgStore, sqlx::PgPool) {
    let schema = schema_name("orderly_test");
    let options = PgConnectOptions::from_str(&url()).expect("a database URL");
    let admin =
        sqlx::PgPool::connect_with(options.clone()).await.expect("PostgreSQL is up (CI starts it; see .ci/run)");
    // The name is ours (digits after a fixed prefix): nothing to inject.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&admin).await.expect("schema");
    admin.close().await;
    let options = options.options([("search_path", schema.as_str())]);
    let store = PgStore::connect(options.clone(), connections, &orderly_postgres::Primary::new()).await.expect("store");
    // Lazy: connects when a test first uses it.
    let pool = sqlx::PgPool::connect_lazy_with(options);
    (store, pool)
}
