//! The `Holdings` contract suite against the in-process gate.

use std::sync::Arc;

use orderly_app::Holdings;
use orderly_local::LocalHoldings;

orderly_contract::holdings_contract!(|| async { Arc::new(LocalHoldings::new()) as Arc<dyn Holdings> });
