//! The payment ledger contract against the embedded database's books.

use std::sync::Arc;

use orderly_ledger::{CaptureBook, LedgerBook};
use orderly_local::{Durability, LocalDb, local_payment_books};

orderly_contract::payment_ledger_contract!(|| async {
    let dir = tempfile::tempdir().expect("temp dir");
    let (book, captures) = local_payment_books(LocalDb::open(dir.path(), Durability::Os).expect("db"));
    ((book as Arc<dyn LedgerBook>, captures as Arc<dyn CaptureBook>), dir)
});
