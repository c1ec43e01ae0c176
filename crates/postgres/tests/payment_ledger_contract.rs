//! The payment ledger contract against PostgreSQL (`TEST_DATABASE_URL`, default the local server's
//! `postgres` database), each case in a fresh schema of its own, migrated from scratch.

use std::str::FromStr;
use std::sync::Arc;

use orderly_ledger::{CaptureBook, LedgerBook};
use rand::TryRngCore;
use sqlx::postgres::PgConnectOptions;

fn url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

orderly_contract::payment_ledger_contract!(|| async {
    let mut bytes = [0u8; 8];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).expect("randomness");
    let schema = format!("orderly_test_pay_{}", u64::from_le_bytes(bytes));
    let options = PgConnectOptions::from_str(&url()).expect("a database URL");
    let (book, captures) =
        orderly_postgres::payments::connect_payment_ledger(options, &schema, 8, &orderly_postgres::Primary::new())
            .await
            .expect("PostgreSQL is up (CI starts it; see .ci/run)");
    ((book as Arc<dyn LedgerBook>, captures as Arc<dyn CaptureBook>), ())
});
