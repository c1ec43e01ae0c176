//! The `Store` contract suite against the embedded LSM store.

use std::sync::Arc;

use orderly_app::Store;
use orderly_local::{Durability, LocalDb, LocalStore};

orderly_contract::store_contract!(|| async {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = LocalDb::open(dir.path(), Durability::Os).expect("db");
    (Arc::new(LocalStore::new(db).expect("store")) as Arc<dyn Store>, dir)
});
