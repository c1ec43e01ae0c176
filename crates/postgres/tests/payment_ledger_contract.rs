//! The payment ledger contract against PostgreSQL (`TEST_DATABASE_URL`, default the local server's
//! `postgres` database), each case in a fresh schema of its own, migrated from scratch.

mod common;

use std::str::FromStr;
use std::sync::Arc;

use orderly_ledger::{CaptureBook, LedgerBook};
use sqlx::postgres::PgConnectOptions;

orderly_contract::payment_ledger_contract!(|| async {
    let schema = common::schema_name("orderly_test_pay");
    let options = PgConnectOptions::from_str(&common::url()).expect("a database URL");
    let (book, captures) =
        orderly_postgres::payments::connect_payment_ledger(options, &schema, 8, &orderly_postgres::Primary::new())
            .await
            .expect("PostgreSQL is up (CI starts it; see .ci/run)");
    ((book as Arc<dyn LedgerBook>, captures as Arc<dyn CaptureBook>), ())
});
