//! `PgStore::change_order` groups concurrent changes into one transaction that locks stock rows before
//! order rows and never after. A change whose order is created between the batch's unlocked read (which
//! names the stock rows to lock) and its locked read needs stock rows the batch did not lock: it is
//! decided by the batch's next round, whose unlocked read sees the order created.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use orderly_app::Store;
use orderly_app::model::{Order, StockLevel};
use orderly_app::ports::{CreateOutcome, CreateRequest};
use orderly_app::store_rules::{Levels, plan_create};
use orderly_contract::store::{A, SHOP, T0_MS, order};
use orderly_domain::{CatalogEntry, Money, OrderAction, OrderNo, OrderState};
use orderly_postgres::PgStore;
use sqlx::Row;

fn key(order_no: OrderNo) -> (i64, i16) {
    (i64::try_from(order_no.id.0).expect("small id"), i16::try_from(order_no.buyer_shard).expect("a shard"))
}

/// A store in a fresh schema (of at most `connections`) selling commodity A, `units` of it.
async fn selling_a(connections: u32, units: u64) -> (PgStore, sqlx::PgPool) {
    let (store, pool) = common::fresh_with(connections).await;
    store
        .put_commodities(&[CatalogEntry { commodity_id: A, shop_id: SHOP, unit_price: Money::from_cents(100) }])
        .await
        .expect("catalog");
    store.add_stock(A, units).await.expect("stock");
    (store, pool)
}

/// The create of `order` on its entry reservation.
fn create_request(order: &Order) -> CreateRequest {
    CreateRequest {
        token: Some(order.entry_token()),
        short_of: None,
        unpaid_deadline_ms: T0_MS + 900_000,
        order: order.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_an_order_created_mid_batch_is_decided_by_the_next_round() {
    let (store, pool) = selling_a(4, 10).await;
    let order = order(1, &[(A, 4)], false);
    store.insert_pending(std::slice::from_ref(&order)).await.expect("pending view");
    let (id, shard) = key(order.order_no);

    // A create, held open by hand: the pending view locked and turned into the created order, the stock
    // deducted — not committed yet.
    let mut create = pool.begin().await.expect("begin");
    sqlx::query("SELECT body FROM orders WHERE order_id = $1 AND shard = $2 FOR UPDATE")
        .bind(id)
        .bind(shard)
        .fetch_one(&mut *create)
        .await
        .expect("the view");
    let row = sqlx::query("SELECT initial, available, version FROM stock WHERE commodity_id = 1 FOR UPDATE")
        .fetch_one(&mut *create)
        .await
        .expect("the stock row");
    let level = |column: &str| u64::try_from(row.get::<i64, _>(column)).expect("not negative");
    let levels: Levels = [(
        A,
        StockLevel {
            shop_id: SHOP,
            initial: level("initial"),
            available: level("available"),
            version: level("version"),
        },
    )]
    .into();
    let request = create_request(&order);
    let plan = plan_create(&[request], HashMap::new(), levels, T0_MS).expect("a plan");
    let created = &plan.orders[0];
    assert_eq!(created.state, OrderState::ToPay);
    write_created(&mut create, created, plan.stock[0].1).await;

    // The cancel's batch reads the order unlocked (pending: no stock row to lock), then waits for the
    // create's lock on the order row.
    let store = std::sync::Arc::new(store);
    let cancelling = std::sync::Arc::clone(&store);
    let cancel =
        tokio::spawn(async move { cancelling.transition(order.order_no, OrderAction::Cancel, T0_MS + 1).await });
    let holder = backend_of(&mut create).await;
    assert!(blocked_by(&pool, holder).await, "the cancel waits for the create's lock on the order row");
    create.commit().await.expect("the create commits");

    let cancelled = cancel.await.expect("task").expect("answered").expect("allowed");
    assert_eq!(cancelled.state, OrderState::Cancelled);
    let available = store.stock(&[A]).await.expect("stock")[0].expect("a ledger").available;
    assert_eq!(available, 10, "deducted by the create, returned once by the cancel");
}

/// Writes a create by hand in `tx`: the order row as created (over its pending view, if there is one)
/// and commodity A's stock row as the create left it.
async fn write_created(tx: &mut sqlx::PgConnection, created: &Order, stock_of_a: StockLevel) {
    let (id, shard) = key(created.order_no);
    sqlx::query(
        "INSERT INTO orders (order_id, shard, buyer, state, body) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (order_id, shard) DO UPDATE SET state = EXCLUDED.state, body = EXCLUDED.body",
    )
    .bind(id)
    .bind(shard)
    .bind(i64::try_from(created.buyer.0).expect("small"))
    .bind(created.state.as_str())
    .bind(serde_json::to_string(created).expect("encodes"))
    .execute(&mut *tx)
    .await
    .expect("the order");
    sqlx::query("UPDATE stock SET available = $1, version = $2 WHERE commodity_id = 1")
        .bind(i64::try_from(stock_of_a.available).expect("small"))
        .bind(i64::try_from(stock_of_a.version).expect("small"))
        .execute(&mut *tx)
        .await
        .expect("the stock");
}

/// The backend serving `tx`.
async fn backend_of(tx: &mut sqlx::PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(tx).await.expect("backend")
}

/// Whether some session comes to wait for a lock that backend `holder` holds, within two seconds (only
/// the holder's own waiters count: the tests of this server run side by side).
async fn blocked_by(pool: &sqlx::PgPool, holder: i32) -> bool {
    for _ in 0..200 {
        let waits: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))")
                .bind(holder)
                .fetch_one(pool)
                .await
                .expect("activity");
        if waits > 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// A row a batch locks: commodity A's stock row, or an order's row by its key.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RowOf {
    StockOfA,
    Order((i64, i16)),
}

/// Locks `row` in `tx` without waiting (`FOR UPDATE NOWAIT`).
async fn lock_now(tx: &mut sqlx::PgConnection, row: RowOf) -> Result<(), sqlx::Error> {
    let query = match row {
        RowOf::StockOfA => sqlx::query("SELECT 1 FROM stock WHERE commodity_id = $1 FOR UPDATE NOWAIT")
            .bind(i64::try_from(A.0).expect("small id")),
        RowOf::Order((id, shard)) => {
            sqlx::query("SELECT 1 FROM orders WHERE order_id = $1 AND shard = $2 FOR UPDATE NOWAIT")
                .bind(id)
                .bind(shard)
        }
    };
    query.execute(tx).await.map(|_| ())
}

/// Whether another transaction holds `row` locked.
async fn locked_elsewhere(pool: &sqlx::PgPool, row: RowOf) -> bool {
    let mut probe = pool.begin().await.expect("begin");
    let tried = lock_now(&mut probe, row).await;
    probe.rollback().await.expect("undone");
    match tried {
        Ok(()) => false,
        Err(error) => {
            let code = error.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned());
            assert_eq!(code.as_deref(), Some("55P03"), "only a lock held elsewhere: {error}");
            true
        }
    }
}

/// A batch locks its stock rows and its orders' rows by one statement, stock first: waiting for a stock
/// row it holds no order row, and waiting for an order row it holds its stock rows — the order every
/// batch takes them in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_locks_its_stock_rows_before_its_order_rows() {
    let (store, pool) = selling_a(4, 10).await;
    let store = std::sync::Arc::new(store);
    for (n, stock_held) in [(1, true), (2, false)] {
        let order = order(n, &[(A, 1)], false);
        store.insert_pending(std::slice::from_ref(&order)).await.expect("pending view");
        let order_row = RowOf::Order(key(order.order_no));
        let (held_row, other_row) =
            if stock_held { (RowOf::StockOfA, order_row) } else { (order_row, RowOf::StockOfA) };
        let mut held = pool.begin().await.expect("begin");
        lock_now(&mut held, held_row).await.expect("held by hand");
        let holder = backend_of(&mut held).await;

        let creating = std::sync::Arc::clone(&store);
        let request = create_request(&order);
        let create = tokio::spawn(async move { creating.create_orders(&[request], T0_MS).await });
        assert!(blocked_by(&pool, holder).await, "the create batch waits for the {held_row:?} row held");
        assert_eq!(
            locked_elsewhere(&pool, other_row).await,
            !stock_held,
            "while the batch waits for the {held_row:?} row, it holds the {other_row:?} row only if that is stock"
        );
        held.rollback().await.expect("released");
        let created = create.await.expect("task").expect("created");
        assert_eq!(created.len(), 1);
        let read = store.order(order.order_no).await.expect("read").expect("the order");
        assert_eq!(read.state, OrderState::ToPay);
    }
}

/// An order created while a batch waits for its stock — by the transaction holding the stock, with no
/// pending view before it — is found created once the batch has the stock, though its one statement for
/// stock and orders took its snapshot before the wait: a redelivered create answers "already done" and
/// deducts nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_created_while_a_batch_waits_for_its_stock_is_found_created() {
    let (store, pool) = selling_a(4, 10).await;
    let store = std::sync::Arc::new(store);
    let order = order(1, &[(A, 3)], false);

    // The first delivery of the create, by hand: the stock row locked, the order written created.
    let mut first = pool.begin().await.expect("begin");
    lock_now(&mut first, RowOf::StockOfA).await.expect("the stock row");
    let holder = backend_of(&mut first).await;
    let creating = std::sync::Arc::clone(&store);
    let request = create_request(&order);
    let again = tokio::spawn(async move { creating.create_orders(&[request], T0_MS).await });
    assert!(blocked_by(&pool, holder).await, "the second delivery's batch waits for the stock row");
    let levels: Levels = [(A, StockLevel { shop_id: SHOP, initial: 10, available: 10, version: 1 })].into();
    let plan = plan_create(&[create_request(&order)], HashMap::new(), levels, T0_MS).expect("a plan");
    let created = &plan.orders[0];
    assert_eq!(created.state, OrderState::ToPay);
    write_created(&mut first, created, plan.stock[0].1).await;
    first.commit().await.expect("the first delivery commits");

    let outcomes = again.await.expect("task").expect("answered");
    assert!(
        matches!(outcomes.as_slice(), [CreateOutcome::AlreadyDone(done)] if done.state == OrderState::ToPay),
        "the order created meanwhile is found: {outcomes:?}"
    );
    let available = store.stock(&[A]).await.expect("stock")[0].expect("a ledger").available;
    assert_eq!(available, 7, "three units deducted once");
}

/// An order's life through the store's grouped statements: its create batch, a read, a change.
async fn life(store: &PgStore, n: u64) {
    let order = order(n, &[(A, 1)], false);
    let request = create_request(&order);
    store.create_orders(&[request], T0_MS).await.expect("created");
    assert!(store.order(order.order_no).await.expect("read").is_some());
    let cancelled = store.transition(order.order_no, OrderAction::Cancel, T0_MS + 1).await.expect("changed");
    assert_eq!(cancelled.expect("allowed").state, OrderState::Cancelled);
}

/// Rows of orders (and as many `safe_pay` entries) and of commodities (with their stock) under ids from
/// `from`, written around the store.
async fn grow(pool: &sqlx::PgPool, from: i64, orders: i64, commodities: i64) {
    sqlx::query(
        "WITH grown AS (
             INSERT INTO orders (order_id, shard, buyer, state, body)
             SELECT g, 0, 1, 'closed', '{}' FROM generate_series($1::bigint, $1 + $2 - 1) g RETURNING order_id)
         INSERT INTO safe_pay (order_id, shard, due_ms) SELECT order_id, 0, order_id FROM grown",
    )
    .bind(from)
    .bind(orders)
    .execute(pool)
    .await
    .expect("orders");
    sqlx::query(
        "WITH catalog AS (
             INSERT INTO commodities (commodity_id, shop_id, unit_price_cents)
             SELECT g, 1, 100 FROM generate_series($1::bigint, $1 + $2 - 1) g RETURNING commodity_id)
         INSERT INTO stock (commodity_id, shop_id, initial, available, version)
         SELECT commodity_id, 1, 1, 1, 0 FROM catalog",
    )
    .bind(from)
    .bind(commodities)
    .execute(pool)
    .await
    .expect("stock");
}

/// A store on one connection (every statement it prepares is on it) whose plans were made on tables of
/// a few rows — never analyzed, or analyzed once they held `analyzed_at` more — and kept while the tables
/// grew by 50 000 orders and 20 000 commodities with no `ANALYZE`. Returns the store and its connection's
/// backend.
async fn plans_kept_while_the_tables_grew(analyzed_at: Option<i64>) -> (PgStore, i32) {
    let (store, pool) = selling_a(1, 1_000).await;
    let backend: i32 =
        sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(store.pool()).await.expect("the store's backend");
    // Statistics only when the test takes them, even on a server with autovacuum on.
    for table in ["orders", "stock", "commodities", "safe_pay"] {
        // A fixed name of ours: nothing to inject.
        sqlx::query(sqlx::AssertSqlSafe(format!("ALTER TABLE {table} SET (autovacuum_enabled = off)")))
            .execute(&pool)
            .await
            .expect("autovacuum off for the table");
    }
    for n in 1..=3 {
        life(&store, n).await;
    }
    if let Some(rows) = analyzed_at {
        grow(&pool, 900_000, rows, rows).await;
        // Plans made from these statistics: the statements' next executions plan again.
        sqlx::query("ANALYZE orders, stock, commodities, safe_pay").execute(&pool).await.expect("analyzed");
        life(&store, 4).await;
    }
    grow(&pool, 1_000_000, 50_000, 20_000).await;
    for n in 5..=6 {
        life(&store, n).await;
    }
    (store, backend)
}

/// Each prepared statement of the store's connection that contains one of `statements` (all of which
/// must be there) has a generic plan only, no sequential scan, and — run with no keys (NULL arrays),
/// then undone — reads no row: a scan by key finds nothing, a walk of a table's index reads the table.
async fn assert_planned_once_by_index(store: &PgStore, backend: i32, statements: &[&str]) {
    let mut connection = store.pool().acquire().await.expect("the store's connection");
    let now: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *connection).await.expect("backend");
    assert_eq!(now, backend, "the connection whose plans are looked at is the one that made them");
    let prepared: Vec<(String, String, i64, i64, i32)> = sqlx::query_as(
        "SELECT name, statement, generic_plans, custom_plans, coalesce(cardinality(parameter_types), 0)
         FROM pg_prepared_statements",
    )
    .fetch_all(&mut *connection)
    .await
    .expect("the connection's prepared statements");
    for statement in statements {
        let mut matching = prepared.iter().filter(|(_, sql, ..)| sql.contains(statement)).peekable();
        assert!(matching.peek().is_some(), "{statement} not prepared: {prepared:#?}");
        for (name, sql, generic, custom, parameters) in matching {
            assert!(*generic > 0 && *custom == 0, "not one generic plan: {sql}");
            let arguments = vec!["NULL"; usize::try_from(*parameters).expect("a count")].join(", ");
            let mut tx = sqlx::Connection::begin(&mut *connection).await.expect("begin");
            // `name` is the server's name for a statement the store prepared: nothing to inject.
            let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) EXECUTE {name}({arguments})"
            )))
            .fetch_all(&mut *tx)
            .await
            .expect("explained");
            tx.rollback().await.expect("undone");
            // Rows each node put out, and those its filters read and dropped.
            let read = plan
                .iter()
                .flat_map(|line| {
                    ["actual rows=", "Rows Removed by Filter: ", "Rows Removed by Join Filter: "]
                        .into_iter()
                        .filter_map(|label| line.split(label).nth(1)?.split(' ').next()?.parse::<u64>().ok())
                })
                .max();
            let plan = plan.join("\n");
            assert!(read.is_some_and(|rows| rows <= 1), "rows read without a key by the plan kept for\n{sql}\n{plan}");
            assert!(!plan.contains("Seq Scan"), "a sequential scan in the plan kept for\n{sql}\n{plan}");
        }
    }
}

/// Every statement of an order's life that names keys.
const KEYED: [&str; 3] =
    ["FROM orders WHERE order_id = ANY($1)", "locked_stock AS MATERIALIZED (", "written_orders AS ("];

/// The store's statements by key are planned once per connection (a generic plan) and read only the rows
/// of their keys: plans made on never-analyzed tables still look each key up in the index once the tables
/// hold tens of thousands of rows (issue 12: planning every execution was a fifth of PostgreSQL's
/// statement time; plans PostgreSQL kept from empty tables scanned them whole for every batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_made_on_never_analyzed_tables_look_each_key_up() {
    let (store, backend) = plans_kept_while_the_tables_grew(None).await;
    assert_planned_once_by_index(&store, backend, &KEYED).await;
}

/// The same from autovacuum's first statistics (it analyzes a table at 50 changed rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_made_from_autovacuums_first_statistics_look_each_key_up() {
    let (store, backend) = plans_kept_while_the_tables_grew(Some(60)).await;
    assert_planned_once_by_index(&store, backend, &KEYED).await;
}

/// From statistics of tables of three orders and one commodity, the order reads and the batch's lock, which
/// name their keys by `= ANY` alone, still look each key up. (The batch write, which joins its keys'
/// arrays, does not: the case left, see `orderly_postgres::session_options`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_by_any_planned_from_near_empty_tables_look_each_key_up() {
    let (store, backend) = plans_kept_while_the_tables_grew(Some(0)).await;
    assert_planned_once_by_index(&store, backend, &KEYED[..2]).await;
}

/// The order reads name the ids alone (`= ANY`): a row of another shard under a requested id — which the
/// unique snowflake ids never make — is left out by its key, before its body is decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_of_another_shard_under_a_read_id_is_left_out() {
    let (store, pool) = selling_a(4, 10).await;
    let order = order(1, &[(A, 1)], false);
    let request = create_request(&order);
    store.create_orders(&[request], T0_MS).await.expect("created");
    let (id, shard) = key(order.order_no);
    sqlx::query("INSERT INTO orders (order_id, shard, buyer, state, body) VALUES ($1, $2, 1, 'closed', 'no order')")
        .bind(id)
        .bind(shard + 1)
        .execute(&pool)
        .await
        .expect("a row of another shard under the same id");

    let read = store.order(order.order_no).await.expect("read").expect("the order");
    assert_eq!((read.order_no, read.state), (order.order_no, OrderState::ToPay));
    let read = store.orders(&[order.order_no]).await.expect("read");
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].as_ref().map(|o| o.order_no), Some(order.order_no));
    let cancelled = store.transition(order.order_no, OrderAction::Cancel, T0_MS + 1).await.expect("changed");
    assert_eq!(cancelled.expect("allowed").state, OrderState::Cancelled);
    let stock = store.stock(&[A]).await.expect("stock")[0].expect("a ledger");
    assert_eq!(stock.available, 10, "deducted by the create, returned by the cancel");
}
