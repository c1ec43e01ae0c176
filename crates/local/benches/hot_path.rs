//! The standalone hot path's functions, each alone (issue 18), so a regression shows before the
//! end-to-end bench: `cargo bench -p orderly-local --bench hot_path`.
//!
//! - `price_and_split`: a three-line cart over two shops priced against the catalog and split.
//! - `reserve_and_release`: a two-line reservation in the in-process stock cache, and its release.
//! - `reserve_checked_and_confirm`: the entry's reservation, arming its check, and the worker's
//!   confirmation, which forgets the check (the path of every accepted order).
//! - `create_batch/64`: 64 pending orders created by one store write (order, stock, outbox), written to
//!   the OS without `fdatasync` (the disk is not what this measures).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use orderly_app::model::{Order, StockLevel, Token};
use orderly_app::ports::{CreateRequest, StockCache, Store};
use orderly_app::time::ManualClock;
use orderly_domain::{
    CartLimits, CatalogEntry, CommodityId, Money, OrderNo, OrderState, PlaceOrderBody, ShopId, SnowflakeId, Uid,
    price_and_split,
};
use orderly_local::{Durability, LocalDb, LocalStockCache, LocalStore};

const NOW_MS: u64 = 1_800_000_000_000;

fn catalog() -> Vec<CatalogEntry> {
    (1..=3)
        .map(|id| CatalogEntry {
            commodity_id: CommodityId(id),
            shop_id: ShopId(100_000 + id.min(2)),
            unit_price: Money::from_cents(1_999),
        })
        .collect()
}

fn cart() -> PlaceOrderBody {
    let line = |id: u64, shop: u64| {
        format!(
            r#"{{"actual_price":19.99,"commodity_id":{id},"good_type":1,"page_type":0,"prices":19.99,"user_id":{shop},"num":2}}"#
        )
    };
    let body = format!(
        r#"{{"uid":7,"to_uid":8,"origin_price":119.94,"actual_price":119.94,"pay_at_once":false,"commodity_details":[{},{},{}]}}"#,
        line(1, 100_001),
        line(2, 100_002),
        line(3, 100_002)
    );
    serde_json::from_str(&body).expect("the cart parses")
}

fn price(c: &mut Criterion) {
    let (catalog, body) = (catalog(), cart());
    c.bench_function("price_and_split", |b| {
        b.iter(|| {
            let drafts = price_and_split(std::hint::black_box(&body), CartLimits::default(), |id| {
                catalog.iter().find(|e| e.commodity_id == id).copied()
            });
            std::hint::black_box(drafts.expect("priced"))
        })
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn reserve(c: &mut Criterion) {
    let rt = runtime();
    let cache = LocalStockCache::new(Arc::new(ManualClock::new(NOW_MS)), 60 * 60 * 1000, 60 * 1000);
    let levels: Vec<(CommodityId, StockLevel)> = (1..=1_000)
        .map(|id| {
            let level = StockLevel { shop_id: ShopId(100_001), initial: 1 << 40, available: 1 << 40, version: 1 };
            (CommodityId(id), level)
        })
        .collect();
    rt.block_on(cache.init(&levels, &[])).expect("init");
    let next = AtomicU64::new(1);
    c.bench_function("reserve_and_release", |b| {
        b.to_async(&rt).iter(|| async {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let token = Token::entry(OrderNo::new(SnowflakeId(n << 22), Uid(7)), ShopId(100_001));
            let lines = [(CommodityId(n % 1_000 + 1), 1), (CommodityId((n + 500) % 1_000 + 1), 2)];
            cache.reserve(token, &lines, false).await.expect("reserved");
            cache.release(token).await.expect("released");
        })
    });
    c.bench_function("reserve_checked_and_confirm", |b| {
        b.to_async(&rt).iter(|| async {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let token = Token::entry(OrderNo::new(SnowflakeId(n << 22), Uid(7)), ShopId(100_001));
            let lines = [(CommodityId(n % 1_000 + 1), 1), (CommodityId((n + 500) % 1_000 + 1), 2)];
            let reserved = cache.reserve_checked(token, &lines, NOW_MS + 10_000).await.expect("reserved");
            assert_eq!(reserved, orderly_app::ports::Reserve::Reserved);
            cache.confirm(token, &[]).await.expect("confirmed");
        })
    });
}

fn pending(n: u64) -> Order {
    let entry = catalog()[0];
    Order {
        order_no: OrderNo::new(SnowflakeId(n << 22), Uid(7)),
        buyer: Uid(7),
        to_uid: Uid(8),
        shop_id: entry.shop_id,
        pay_at_once: false,
        lines: vec![orderly_domain::OrderLine {
            commodity_id: entry.commodity_id,
            quantity: 1,
            unit_price: entry.unit_price,
        }],
        total: entry.unit_price,
        state: OrderState::Pending,
        created_ms: NOW_MS,
        updated_ms: NOW_MS,
        payment_attempt: None,
        payment_id: None,
        last_decline: None,
        rejected_for: None,
        token_generation: None,
        stock_versions: Vec::new(),
        trace: None,
    }
}

fn create(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = rt.block_on(async {
        let store = LocalStore::new(LocalDb::open(dir.path(), Durability::Os).expect("opens")).expect("store");
        store.put_commodities(&catalog()).await.expect("catalog");
        store.add_stock(CommodityId(1), 1 << 40).await.expect("stock");
        store
    });
    let next = AtomicU64::new(1);
    c.bench_function("create_batch/64", |b| {
        b.to_async(&rt).iter_batched(
            || {
                (0..64)
                    .map(|_| {
                        let order = pending(next.fetch_add(1, Ordering::Relaxed));
                        CreateRequest {
                            token: Some(order.entry_token()),
                            short_of: None,
                            unpaid_deadline_ms: NOW_MS + 900_000,
                            order,
                        }
                    })
                    .collect::<Vec<_>>()
            },
            |batch| {
                let store = &store;
                async move { store.create_orders(&batch, NOW_MS).await.expect("created") }
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, price, reserve, create);
criterion_main!(benches);
