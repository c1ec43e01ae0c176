//! [`PgStore`]: the `Store` port on PostgreSQL (sqlx; migrations under `migrations/`, run at start).
//!
//! Every read-check-write is one transaction that locks what it checks (`SELECT … FOR UPDATE`), so two
//! processes racing on an order or a commodity serialise on its rows. The batched create locks the
//! batch's stock rows in commodity order, then its orders' rows in key order, by one statement (an order
//! created while it waited is read again, locked, by a second: [`PgStore::lock_batch`]), decides every
//! order in memory, and writes the stock levels, the orders and their outbox events by one statement, in
//! one commit.
//! The stock table refuses `available < 0` itself: the last guard against an oversell.
//!
//! [`payments`]: the payment service's ledger, in a schema of its own.
//!
//! [`error`]: [`PgError`], what can fail here, mapped to the ports' error.
//!
//! Queries are checked at run time, not compile time (no database is needed to build); the `Store`
//! contract suite runs every one of them against PostgreSQL.

pub mod error;
pub mod payments;
pub mod primary;

pub use error::PgError;
pub use primary::Primary;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use orderly_app::PortError;
use orderly_app::group::Group;
use orderly_app::model::{IdempotencyRecord, Order, OutboxEvent, StockLevel, StoredAnswer};
use orderly_app::ports::{
    ChangeRejection, ChangeResult, CreateOutcome, CreateRequest, IdempotencyBegin, OrderChange, PortResult, Store,
};
use orderly_app::store_rules::{
    CATALOG_VERSION, Levels, SafePay, create_batch_keys, idempotency_seen, may_return_stock, plan_change, plan_create,
    stock_to_lock,
};
use orderly_domain::{CatalogEntry, CommodityId, Money, OrderNo, ShopId, SnowflakeId, Uid};
use sqlx::postgres::PgConnectOptions;
use sqlx::{PgPool, Postgres, Row, Transaction};

/// The schema's migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Connections with `synchronous_commit = off`, for the writes the port lets go unsynced (the pending
    /// view, an idempotency answer, outbox done marks): a crash may lose the last fraction of a second
    /// of those, never corrupts; the entry does not wait for a WAL flush to record a pending view.
    unsynced: PgPool,
    /// Concurrent entries' pending views, written by one statement a batch.
    pending_views: Arc<Group<Vec<PendingRow>>>,
    /// Concurrent reads of one order, made by one statement a batch.
    reads: Arc<Group<OrderNo, Option<Order>>>,
    /// Concurrent reads of one catalog entry, made by one statement a batch.
    commodities: Arc<Group<CommodityId, Option<CatalogEntry>>>,
    /// Concurrent order changes, made by one transaction a batch.
    changes: Arc<Group<Change, Result<Order, ChangeRejection>>>,
}

/// One caller's change: the order, the change, the time of the change.
type Change = (OrderNo, OrderChange, u64);

/// A pending view as written: order id, shard, buyer, state, body.
type PendingRow = (i64, i16, i64, &'static str, String);

/// How long a batch of pending views may wait for a connection before it gives up unwritten. A view must
/// land soon after its entry answered, or not at all: an entry cut off by its deadline has answered an
/// error and the reservation check (seconds later) settles whatever view it finds — a view still waiting
/// for a connection while PostgreSQL fails over (≈ 10 s) would land after the check and stay pending
/// (`scripts/failover pg-primary`: 3 such orders in one run). Well under the reservation check's delay.
const PENDING_VIEW_CONNECT_MS: u64 = 1_000;

/// Writes pending views, each if absent only (a fast worker may have created the order already): one
/// statement for every entry of a batch.
async fn insert_pending_rows(pool: PgPool, batch: Vec<Vec<PendingRow>>) -> Vec<PortResult<()>> {
    let rows: Vec<&PendingRow> = batch.iter().flatten().collect();
    let connection = tokio::time::timeout(Duration::from_millis(PENDING_VIEW_CONNECT_MS), pool.acquire()).await;
    let mut connection = match connection {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            let error = database_error(error);
            return batch.iter().map(|_| Err(error.clone())).collect();
        }
        Err(_) => {
            let error = PortError::unavailable("postgres", "no connection for the pending views in time");
            return batch.iter().map(|_| Err(error.clone())).collect();
        }
    };
    let written = sqlx::query(
        "INSERT INTO orders (order_id, shard, buyer, state, body)
         SELECT * FROM UNNEST($1::bigint[], $2::smallint[], $3::bigint[], $4::text[], $5::text[])
         ON CONFLICT (order_id, shard) DO NOTHING",
    )
    .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.2).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.3).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.4.as_str()).collect::<Vec<_>>())
    .execute(&mut *connection)
    .await
    .map(|_| ())
    .map_err(database_error);
    batch.iter().map(|_| written.clone()).collect()
}

/// Reads orders for concurrent callers, by one statement.
async fn read_orders(pool: PgPool, batch: Vec<OrderNo>) -> Vec<PortResult<Option<Order>>> {
    match PgStore::orders_by_keys(&pool, &batch).await {
        Ok(found) => batch.iter().map(|n| Ok(found.get(n).cloned())).collect(),
        Err(error) => batch.iter().map(|_| Err(error.clone())).collect(),
    }
}

/// Reads catalog entries for concurrent callers, by one statement.
async fn read_commodities(pool: PgPool, batch: Vec<CommodityId>) -> Vec<PortResult<Option<CatalogEntry>>> {
    let read = async {
        let ids = batch.iter().map(|id| signed(id.0)).collect::<PortResult<Vec<_>>>()?;
        let rows =
            sqlx::query("SELECT commodity_id, shop_id, unit_price_cents FROM commodities WHERE commodity_id = ANY($1)")
                .bind(ids)
                .fetch_all(&pool)
                .await
                .map_err(database_error)?;
        let get = |row: &sqlx::postgres::PgRow, column: &str| row.try_get::<i64, _>(column).map_err(database_error);
        rows.iter()
            .map(|row| {
                let id = CommodityId(unsigned(get(row, "commodity_id")?)?);
                let entry = CatalogEntry {
                    commodity_id: id,
                    shop_id: ShopId(unsigned(get(row, "shop_id")?)?),
                    unit_price: Money::from_cents(get(row, "unit_price_cents")?),
                };
                Ok((id, entry))
            })
            .collect::<PortResult<HashMap<_, _>>>()
    };
    match read.await {
        Ok(found) => batch.iter().map(|id| Ok(found.get(id).copied())).collect(),
        Err(error) => batch.iter().map(|_| Err(error.clone())).collect(),
    }
}

/// Makes concurrent callers' order changes in one transaction: each decided in arrival order on the
/// order and stock as the changes before it left them, exactly as one transaction per change would, and
/// written by one statement ([`WRITE_BATCH`]). A refused change (or one whose order cannot be read) writes
/// nothing and does not hold up the others; a failed transaction fails them all (nothing was done).
///
/// Locks are taken in the create batch's order, stock rows (by commodity) before order rows (by key),
/// and never a stock row after an order row ([`PgStore::lock_batch`]; an order created while the batch's
/// lock statement ran is locked after the others, the one way two batches may deadlock — rarely, and
/// PostgreSQL then fails one of them). An order's lines never change: an unlocked read names the stock
/// rows to lock; the locked read decides. An order created between the two reads needs stock rows the
/// batch did not lock: its changes are decided by the next round, whose unlocked read sees it created.
async fn change_orders(pool: PgPool, batch: Vec<Change>) -> Vec<ChangeResult> {
    let mut results: Vec<Option<ChangeResult>> = vec![None; batch.len()];
    let mut undecided: Vec<usize> = (0..batch.len()).collect();
    for _ in 0..CHANGE_ROUNDS_MAX {
        if undecided.is_empty() {
            break;
        }
        let round: Vec<&Change> = undecided.iter().map(|&i| &batch[i]).collect();
        match change_orders_in_one(&pool, &round).await {
            Ok(decided) => {
                let mut left = Vec::new();
                for (i, result) in undecided.into_iter().zip(decided) {
                    match result {
                        Some(result) => results[i] = Some(result),
                        None => left.push(i),
                    }
                }
                undecided = left;
            }
            Err(error) => {
                for i in undecided.drain(..) {
                    results[i] = Some(Err(error.clone()));
                }
            }
        }
    }
    let again = || Err(PortError::unavailable("postgres", "the order changed under its change; run it again"));
    results.into_iter().map(|result| result.unwrap_or_else(again)).collect()
}

/// Rounds of [`change_orders`]: an order is created at most once, so a second round decides it.
const CHANGE_ROUNDS_MAX: usize = 3;

/// One round of [`change_orders`]: `None` for a change left to the next round (its order was created
/// after the unlocked read, and so is every later change of the same order).
async fn change_orders_in_one(pool: &PgPool, batch: &[&Change]) -> PortResult<Vec<Option<ChangeResult>>> {
    let mut tx = pool.begin().await.map_err(database_error)?;
    let returning: Vec<OrderNo> =
        batch.iter().filter(|(_, change, _)| may_return_stock(change)).map(|(n, _, _)| *n).collect();
    let unlocked = PgStore::orders_by_keys(&mut *tx, &returning).await?;
    let named: BTreeSet<CommodityId> = batch
        .iter()
        .filter_map(|(n, change, _)| unlocked.get(n).map(|order| stock_to_lock(order, change)))
        .flatten()
        .collect();
    let order_nos: Vec<OrderNo> = batch.iter().map(|(n, _, _)| *n).collect::<BTreeSet<_>>().into_iter().collect();
    let (mut levels, mut orders) =
        PgStore::lock_batch(&mut tx, &named.into_iter().collect::<Vec<_>>(), &order_nos).await?;
    let (mut results, mut events) = (Vec::with_capacity(batch.len()), Vec::new());
    let (mut changed, mut stock, mut safe_pay, mut deferred) =
        (BTreeSet::new(), BTreeSet::new(), BTreeMap::new(), BTreeSet::new());
    for (order_no, change, now_ms) in batch.iter().copied() {
        let Some(order) = orders.get(order_no).cloned() else {
            results.push(Some(Ok(Err(ChangeRejection::NotFound))));
            continue;
        };
        let needed = stock_to_lock(&order, change);
        if deferred.contains(order_no) || needed.iter().any(|id| !levels.contains_key(id)) {
            deferred.insert(*order_no);
            results.push(None);
            continue;
        }
        let own: Levels = needed.iter().filter_map(|id| levels.get(id).map(|level| (*id, *level))).collect();
        let plan = match plan_change(order, change.clone(), own, *now_ms) {
            Ok(Ok(plan)) => plan,
            Ok(Err(rejection)) => {
                results.push(Some(Ok(Err(rejection))));
                continue;
            }
            Err(error) => {
                results.push(Some(Err(error)));
                continue;
            }
        };
        for (id, level) in plan.stock {
            levels.insert(id, level);
            stock.insert(id);
        }
        events.extend(plan.event);
        if plan.safe_pay != SafePay::Untouched {
            safe_pay.insert(*order_no, plan.safe_pay);
        }
        changed.insert(*order_no);
        orders.insert(*order_no, plan.order.clone());
        results.push(Some(Ok(Ok(plan.order))));
    }
    let stock: Vec<(CommodityId, StockLevel)> = stock.iter().map(|id| (*id, levels[id])).collect();
    let changed: Vec<Order> = changed.iter().map(|n| orders[n].clone()).collect();
    let writes = BatchWrites { orders: &changed, events: &events, stock: &stock, safe_pay: Some(&safe_pay) };
    PgStore::write_batch(&mut tx, writes).await?;
    PgStore::commit(tx).await?;
    Ok(results)
}

fn database_error(error: sqlx::Error) -> PortError {
    PgError::from(error).into()
}

fn signed(value: u64) -> PortResult<i64> {
    i64::try_from(value).map_err(|_| PgError::OutOfRange(format!("{value}")).into())
}

fn unsigned(value: i64) -> PortResult<u64> {
    u64::try_from(value).map_err(|_| PgError::BadRow(format!("negative value {value}")).into())
}

fn key(order_no: OrderNo) -> PortResult<(i64, i16)> {
    let shard = i16::try_from(order_no.buyer_shard)
        .map_err(|_| PgError::OutOfRange(format!("buyer shard {}", order_no.buyer_shard)))?;
    Ok((signed(order_no.id.0)?, shard))
}

/// The (id, shard) keys of these order numbers.
fn order_keys(order_nos: &[OrderNo]) -> PortResult<HashSet<(i64, i16)>> {
    order_nos.iter().map(|&n| key(n)).collect()
}

/// Keeps an order row read by its id alone if it is one of `keys`. Ids are unique across shards
/// (snowflake ids from leased workers); a row of another shard under a read id — none is ever written —
/// is left out by its key columns, before its body is decoded.
fn keep_order(
    row: &sqlx::postgres::PgRow,
    keys: &HashSet<(i64, i16)>,
    found: &mut HashMap<OrderNo, Order>,
) -> PortResult<()> {
    let id: i64 = row.try_get("order_id").map_err(database_error)?;
    let shard: i16 = row.try_get("shard").map_err(database_error)?;
    if keys.contains(&(id, shard)) {
        let order: Order = decode(&row.try_get::<String, _>("body").map_err(database_error)?)?;
        found.insert(order.order_no, order);
    }
    Ok(())
}

fn encode<T: serde::Serialize>(value: &T) -> PortResult<String> {
    serde_json::to_string(value).map_err(|e| PgError::Unencodable(e).into())
}

fn decode<T: serde::de::DeserializeOwned>(text: &str) -> PortResult<T> {
    serde_json::from_str(text).map_err(|e| PgError::BadRow(format!("undecodable body: {e}")).into())
}

fn level_of(row: &sqlx::postgres::PgRow) -> PortResult<(CommodityId, StockLevel)> {
    let get = |column: &str| row.try_get::<i64, _>(column).map_err(database_error);
    Ok((
        CommodityId(unsigned(get("commodity_id")?)?),
        StockLevel {
            shop_id: ShopId(unsigned(get("shop_id")?)?),
            initial: unsigned(get("initial")?)?,
            available: unsigned(get("available")?)?,
            version: unsigned(get("version")?)?,
        },
    ))
}

type Tx = Transaction<'static, Postgres>;

/// What an atomic batch writes ([`PgStore::write_batch`]).
#[derive(Debug)]
struct BatchWrites<'a> {
    /// Orders written (each number once), whatever was stored under their numbers.
    orders: &'a [Order],
    /// Outbox events appended, in their order.
    events: &'a [OutboxEvent],
    /// Stock levels (each commodity once).
    stock: &'a [(CommodityId, StockLevel)],
    /// Each order's safe-pay entry entered (or moved), or removed.
    safe_pay: Option<&'a BTreeMap<OrderNo, SafePay>>,
}

/// The rows a batch decides on, locked and read by one statement ([`PgStore::lock_batch`]): the stock rows
/// (`$1`, commodity ids) in commodity order, then the orders (`$2`, order ids) in key order — never a
/// stock row after an order row, as every batch locks them. Each part is a `MATERIALIZED` CTE locking as
/// its sorted rows come out (`ORDER BY … FOR UPDATE`), and the `UNION ALL` reads its first branch to the
/// end before it starts the second (an `Append`, never parallel for a statement that locks rows). Both
/// name their keys by `= ANY` alone (see [`session_options`]).
///
/// One statement sees one snapshot, taken before it waits for the stock rows: an order row it finds is
/// locked at its newest version (`FOR UPDATE` reads a row changed meanwhile again), but an order row
/// inserted while it waited — by the batch holding the stock, creating the same order — is not there
/// for it. [`PgStore::lock_batch`] reads the orders it did not find again, by a statement of its own.
const LOCK_BATCH: &str = "WITH
    locked_stock AS MATERIALIZED (
        SELECT commodity_id, shop_id, initial, available, version FROM stock
        WHERE commodity_id = ANY($1) ORDER BY commodity_id FOR UPDATE),
    locked_orders AS MATERIALIZED (
        SELECT order_id, shard, body FROM orders
        WHERE order_id = ANY($2) ORDER BY order_id, shard FOR UPDATE)
SELECT commodity_id, shop_id, initial, available, version,
    NULL::bigint AS order_id, NULL::smallint AS shard, NULL::text AS body FROM locked_stock
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, order_id, shard, body FROM locked_orders";

/// [`BatchWrites`] as one statement: a data-modifying CTE per table, each run once whether or not the
/// query reads it, each a no-op on empty arrays (planned once per connection, by index: see
/// [`session_options`]). No two parts touch the same row: each order, commodity and
/// safe-pay entry appears once, and an order either enters safe pay or leaves it.
const WRITE_BATCH: &str = "WITH
    written_orders AS (
        INSERT INTO orders (order_id, shard, buyer, state, body)
        SELECT * FROM UNNEST($1::bigint[], $2::smallint[], $3::bigint[], $4::text[], $5::text[])
        ON CONFLICT (order_id, shard) DO UPDATE SET state = EXCLUDED.state, body = EXCLUDED.body),
    appended_events AS (
        INSERT INTO outbox (event) SELECT e FROM UNNEST($6::text[]) WITH ORDINALITY AS u(e, n) ORDER BY n),
    written_stock AS (
        UPDATE stock SET available = u.available, version = u.version
        FROM UNNEST($7::bigint[], $8::bigint[], $9::bigint[]) AS u(id, available, version)
        WHERE stock.commodity_id = u.id),
    entered_safe_pay AS (
        INSERT INTO safe_pay (order_id, shard, due_ms)
        SELECT * FROM UNNEST($10::bigint[], $11::smallint[], $12::bigint[])
        ON CONFLICT (order_id, shard) DO UPDATE SET due_ms = EXCLUDED.due_ms),
    left_safe_pay AS (
        DELETE FROM safe_pay USING UNNEST($13::bigint[], $14::smallint[]) AS u(id, shard)
        WHERE safe_pay.order_id = u.id AND safe_pay.shard = u.shard)
SELECT 1";

/// What every session of ours sets: each statement planned once per connection, by index.
///
/// Every statement of the flow reads or writes rows by key (orders by number, stock by commodity, the
/// ledger by order), most of them a batch of keys bound as `UNNEST` arrays. Two ways of planning them
/// went wrong here (docs/BENCHMARKS.md, issue 12):
/// - PostgreSQL's own choice (`plan_cache_mode = auto`): after five executions a prepared statement keeps
///   a generic plan picked from the statistics of that moment, until an `ANALYZE` invalidates it. On a
///   fresh database (tables empty; never analyzed at all where autovacuum is off) the batched reads and
///   updates got hash joins over sequential scans and kept them while the tables grew: one 20 s bench
///   read 109 M ledger rows in 2 338 sequential scans and 68 M order rows in 679.
/// - A custom plan for every execution (`force_custom_plan`, what came next): right plans, but planned
///   again each time — a fifth of PostgreSQL's statement time (11.3 s of planning against 44.9 s of
///   execution, 20.6 s of it waiting for stock locks, in one mixed run), more than the grouped order
///   read's execution itself.
///
/// So the plan is generic (`force_generic_plan`: made at a statement's first execution on a connection,
/// kept until the connection is replaced or an `ANALYZE` of its tables plans it again), and sequential
/// scans, hash joins and merge joins are priced out (`enable_* = off`): made from a never-analyzed table
/// (PostgreSQL assumes ten pages) or from autovacuum's first statistics (taken at 50 changed rows), the
/// plan of a statement by key looks each key up in the index and goes on doing so as the table grows.
/// One case is left: statistics of a table analyzed while it held fewer than about ten rows (a queue
/// table such as `safe_pay` near empty, or an `ANALYZE` by hand) make the table the outer side of a
/// nested loop over the keys, a walk of its whole key index, until the next `ANALYZE` plans it again
/// (autovacuum's next, after 50 changed rows; never, where autovacuum is off). So the order reads, the
/// most frequent, name the order ids by `= ANY` alone, with no join ([`PgStore::orders_by_keys`]); so
/// do the batch's lock ([`LOCK_BATCH`]) and the catalog reads. The batch write (stock, `safe_pay`) and
/// the ledger's answers still join `UNNEST` arrays: naming the keys again as `= ANY` there gives the
/// table an index condition, but the nested loop then compares every row with every key (44 ms for 256
/// stock rows, where today's plan takes 2), and without the join each row's values would be found by
/// array position (2.0–6.2 ms for 256, no better); the tables they update only grow, except `safe_pay`,
/// a queue, the one exposed.
/// Tests: `crates/postgres/tests/grouped_changes.rs`, `plans_made_*` and `reads_by_any_*`.
pub fn session_options(options: PgConnectOptions) -> PgConnectOptions {
    options.options([
        ("plan_cache_mode", "force_generic_plan"),
        ("enable_seqscan", "off"),
        ("enable_hashjoin", "off"),
        ("enable_mergejoin", "off"),
    ])
}

/// Says so when the server does not run autovacuum: nothing reclaims dead rows (every order change leaves
/// one) and the planner has no statistics. The server's setting, not ours to change; said by each store
/// at start (the payment ledger, on the same server, says nothing more).
async fn warn_without_autovacuum(pool: &PgPool) {
    match sqlx::query_scalar::<_, String>("SHOW autovacuum").fetch_one(pool).await {
        Ok(on) if on == "on" => {}
        Ok(off) => tracing::warn!(
            autovacuum = %off,
            "PostgreSQL runs without autovacuum: dead rows of orders and payments are never reclaimed and tables are never analyzed; turn it on (postgresql.conf)"
        ),
        Err(error) => tracing::debug!(%error, "could not read the server's autovacuum setting"),
    }
}

impl PgStore {
    /// Connects (a pool of `connections_max`, and a quarter of that unsynced) and brings the schema up
    /// to date. The pools follow `primary` (see [`Primary`]).
    pub async fn connect(
        options: PgConnectOptions,
        connections_max: u32,
        primary: &Arc<Primary>,
    ) -> PortResult<PgStore> {
        let options = session_options(options);
        let pool = primary
            .pool_options()
            .max_connections(connections_max)
            .connect_with(options.clone())
            .await
            .map_err(database_error)?;
        primary.follow(&pool, options.clone());
        MIGRATOR.run(&pool).await.map_err(PgError::Migration)?;
        warn_without_autovacuum(&pool).await;
        let unsynced_options = options.options([("synchronous_commit", "off")]);
        let unsynced = primary
            .pool_options()
            .max_connections((connections_max / 4).max(2))
            .connect_lazy_with(unsynced_options.clone());
        primary.follow(&unsynced, unsynced_options);
        Ok(PgStore {
            pool,
            unsynced,
            pending_views: Arc::new(Group::new("postgres")),
            reads: Arc::new(Group::new("postgres")),
            commodities: Arc::new(Group::new("postgres")),
            changes: Arc::new(Group::new("postgres")),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin(&self) -> PortResult<Tx> {
        self.pool.begin().await.map_err(database_error)
    }

    /// The orders stored under these numbers, by one statement.
    ///
    /// Read by their ids alone (`= ANY`): an index condition in every plan PostgreSQL may keep, and half
    /// the time of joining the (id, shard) pairs unnested (0.36 against 0.73 ms for 256 numbers; see
    /// [`session_options`]).
    async fn orders_by_keys<'e>(
        executor: impl sqlx::PgExecutor<'e>,
        order_nos: &[OrderNo],
    ) -> PortResult<HashMap<OrderNo, Order>> {
        if order_nos.is_empty() {
            return Ok(HashMap::new());
        }
        let keys = order_keys(order_nos)?;
        let ids: Vec<i64> = keys.iter().map(|(id, _)| *id).collect();
        let rows = sqlx::query("SELECT order_id, shard, body FROM orders WHERE order_id = ANY($1)")
            .bind(ids)
            .fetch_all(executor)
            .await
            .map_err(database_error)?;
        let mut found = HashMap::with_capacity(keys.len());
        for row in &rows {
            keep_order(row, &keys, &mut found)?;
        }
        Ok(found)
    }

    /// Locks a batch's stock rows and its orders' rows and reads them, by one statement ([`LOCK_BATCH`]):
    /// the stock rows, taken first, are held one round trip less than by a statement for each (the
    /// stock lock's wait was the largest figure of PostgreSQL's statement time; docs/BENCHMARKS.md,
    /// "Stock and orders locked by one statement").
    ///
    /// The orders that statement did not find are looked for again, locked, by one more statement, whose
    /// snapshot is taken with every stock row held: an order another batch created while this one waited
    /// for the stock is found created, as when the orders were read after the stock lock by a statement
    /// of their own (a create batch deciding such an order again would deduct its stock twice; a change
    /// would answer "not found"). Usually nothing is missing — a create's pending view is written before
    /// it is published, a change names an order that exists — and the batch makes one statement. The
    /// orders found again are locked after the others, out of key order with them, so two batches can
    /// deadlock where the two-statement design could not: one holding an order row above one created
    /// while its statement ran, the other holding that new order and waiting for the first's row (a
    /// payment's change holds an order without its stock, so stock shared does not keep them apart).
    /// PostgreSQL fails one of them after its `deadlock_timeout` (1 s); a failed batch's changes are all
    /// retryable errors, nothing done.
    async fn lock_batch(
        tx: &mut Tx,
        commodities: &[CommodityId],
        order_nos: &[OrderNo],
    ) -> PortResult<(Levels, HashMap<OrderNo, Order>)> {
        if commodities.is_empty() && order_nos.is_empty() {
            return Ok((Levels::new(), HashMap::new()));
        }
        let mut raw: Vec<i64> = commodities.iter().map(|id| signed(id.0)).collect::<PortResult<_>>()?;
        raw.sort_unstable();
        raw.dedup();
        let keys = order_keys(order_nos)?;
        let ids: Vec<i64> = keys.iter().map(|(id, _)| *id).collect();
        let rows = sqlx::query(LOCK_BATCH).bind(&raw).bind(ids).fetch_all(&mut **tx).await.map_err(database_error)?;
        let (mut levels, mut orders) = (Levels::new(), HashMap::with_capacity(keys.len()));
        for row in &rows {
            if row.try_get::<Option<i64>, _>("commodity_id").map_err(database_error)?.is_some() {
                let (id, level) = level_of(row)?;
                levels.insert(id, level);
            } else {
                keep_order(row, &keys, &mut orders)?;
            }
        }
        let missing: HashSet<(i64, i16)> =
            order_nos.iter().filter(|n| !orders.contains_key(n)).map(|&n| key(n)).collect::<PortResult<_>>()?;
        if !missing.is_empty() {
            let ids: Vec<i64> = missing.iter().map(|(id, _)| *id).collect();
            let rows = sqlx::query(
                "SELECT order_id, shard, body FROM orders WHERE order_id = ANY($1) ORDER BY order_id, shard FOR UPDATE",
            )
            .bind(ids)
            .fetch_all(&mut **tx)
            .await
            .map_err(database_error)?;
            for row in &rows {
                keep_order(row, &missing, &mut orders)?;
            }
        }
        Ok((levels, orders))
    }

    /// Everything an atomic batch leaves (a create batch, a round of order changes), by one statement:
    /// one round trip while the batch's stock and order rows are locked, where a statement per table was
    /// four (see [`WRITE_BATCH`]).
    async fn write_batch(tx: &mut Tx, writes: BatchWrites<'_>) -> PortResult<()> {
        let (mut ids, mut shards, mut buyers, mut states, mut bodies) = (vec![], vec![], vec![], vec![], vec![]);
        for order in writes.orders {
            let (id, shard) = key(order.order_no)?;
            ids.push(id);
            shards.push(shard);
            buyers.push(signed(order.buyer.0)?);
            states.push(order.state.as_str());
            bodies.push(encode(order)?);
        }
        let events = writes.events.iter().map(encode).collect::<PortResult<Vec<_>>>()?;
        let (mut commodities, mut available, mut versions) = (vec![], vec![], vec![]);
        for (id, level) in writes.stock {
            commodities.push(signed(id.0)?);
            available.push(signed(level.available)?);
            versions.push(signed(level.version)?);
        }
        let (mut entered, mut left) = ((vec![], vec![], vec![]), (vec![], vec![]));
        for (&order_no, safe_pay) in writes.safe_pay.into_iter().flatten() {
            let (id, shard) = key(order_no)?;
            match *safe_pay {
                SafePay::Untouched => {}
                SafePay::Enter { due_ms } => {
                    entered.0.push(id);
                    entered.1.push(shard);
                    entered.2.push(signed(due_ms)?);
                }
                SafePay::Leave => {
                    left.0.push(id);
                    left.1.push(shard);
                }
            }
        }
        if ids.is_empty() && events.is_empty() && commodities.is_empty() && entered.0.is_empty() && left.0.is_empty() {
            // A batch that changed nothing (every create done already, every change refused).
            return Ok(());
        }
        sqlx::query(WRITE_BATCH)
            .bind(ids)
            .bind(shards)
            .bind(buyers)
            .bind(states)
            .bind(bodies)
            .bind(events)
            .bind(commodities)
            .bind(available)
            .bind(versions)
            .bind(entered.0)
            .bind(entered.1)
            .bind(entered.2)
            .bind(left.0)
            .bind(left.1)
            .execute(&mut **tx)
            .await
            .map_err(database_error)?;
        Ok(())
    }

    async fn commit(tx: Tx) -> PortResult<()> {
        tx.commit().await.map_err(database_error)
    }
}

#[async_trait]
impl Store for PgStore {
    async fn put_commodities(&self, entries: &[CatalogEntry]) -> PortResult<()> {
        let mut tx = self.begin().await?;
        // First: the version's row lock orders concurrent catalog writes, so they cannot deadlock on
        // the entries they share.
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ($1, 1) ON CONFLICT (key) DO UPDATE SET value = meta.value + 1",
        )
        .bind(CATALOG_VERSION)
        .execute(&mut *tx)
        .await
        .map_err(database_error)?;
        for entry in entries {
            sqlx::query(
                "INSERT INTO commodities (commodity_id, shop_id, unit_price_cents) VALUES ($1, $2, $3)
                 ON CONFLICT (commodity_id) DO UPDATE SET shop_id = EXCLUDED.shop_id,
                 unit_price_cents = EXCLUDED.unit_price_cents",
            )
            .bind(signed(entry.commodity_id.0)?)
            .bind(signed(entry.shop_id.0)?)
            .bind(entry.unit_price.cents())
            .execute(&mut *tx)
            .await
            .map_err(database_error)?;
        }
        Self::commit(tx).await
    }

    async fn commodity(&self, id: CommodityId) -> PortResult<Option<CatalogEntry>> {
        let pool = self.pool.clone();
        self.commodities.send(id, |batch| read_commodities(pool, batch)).await
    }

    async fn catalog_version(&self) -> PortResult<u64> {
        Ok(self.meta(CATALOG_VERSION).await?.unwrap_or(0))
    }

    async fn add_stock(&self, id: CommodityId, quantity: u64) -> PortResult<StockLevel> {
        let row = sqlx::query(
            "INSERT INTO stock (commodity_id, shop_id, initial, available, version)
             SELECT commodity_id, shop_id, $2, $2, 1 FROM commodities WHERE commodity_id = $1
             ON CONFLICT (commodity_id) DO UPDATE SET initial = stock.initial + EXCLUDED.initial,
                 available = stock.available + EXCLUDED.available, version = stock.version + 1
             RETURNING commodity_id, shop_id, initial, available, version",
        )
        .bind(signed(id.0)?)
        .bind(signed(quantity)?)
        .fetch_optional(&self.pool)
        .await
        .map_err(database_error)?
        .ok_or_else(|| PgError::BadRow(format!("stock for unknown {id}")))?;
        Ok(level_of(&row)?.1)
    }

    async fn stock(&self, ids: &[CommodityId]) -> PortResult<Vec<Option<StockLevel>>> {
        let raw: Vec<i64> = ids.iter().map(|id| signed(id.0)).collect::<PortResult<_>>()?;
        let rows = sqlx::query(
            "SELECT commodity_id, shop_id, initial, available, version FROM stock WHERE commodity_id = ANY($1)",
        )
        .bind(&raw)
        .fetch_all(&self.pool)
        .await
        .map_err(database_error)?;
        let found: HashMap<CommodityId, StockLevel> = rows.iter().map(level_of).collect::<PortResult<_>>()?;
        Ok(ids.iter().map(|id| found.get(id).copied()).collect())
    }

    async fn all_stock(&self) -> PortResult<Vec<(CommodityId, StockLevel)>> {
        let rows =
            sqlx::query("SELECT commodity_id, shop_id, initial, available, version FROM stock ORDER BY commodity_id")
                .fetch_all(&self.pool)
                .await
                .map_err(database_error)?;
        rows.iter().map(level_of).collect()
    }

    async fn insert_pending(&self, orders: &[Order]) -> PortResult<()> {
        let mut rows = Vec::with_capacity(orders.len());
        for order in orders {
            let (id, shard) = key(order.order_no)?;
            rows.push((id, shard, signed(order.buyer.0)?, order.state.as_str(), encode(order)?));
        }
        let pool = self.unsynced.clone();
        self.pending_views.send(rows, |batch| insert_pending_rows(pool, batch)).await
    }

    async fn forget_pending(&self, order_nos: &[OrderNo]) -> PortResult<()> {
        for &order_no in order_nos {
            let (id, shard) = key(order_no)?;
            sqlx::query("DELETE FROM orders WHERE order_id = $1 AND shard = $2 AND state = 'pending'")
                .bind(id)
                .bind(shard)
                .execute(&self.pool)
                .await
                .map_err(database_error)?;
        }
        Ok(())
    }

    async fn pending_orders(&self) -> PortResult<Vec<Order>> {
        let rows = sqlx::query("SELECT body FROM orders WHERE state = 'pending'")
            .fetch_all(&self.pool)
            .await
            .map_err(database_error)?;
        rows.iter().map(|row| decode(&row.try_get::<String, _>("body").map_err(database_error)?)).collect()
    }

    async fn create_orders(&self, requests: &[CreateRequest], now_ms: u64) -> PortResult<Vec<CreateOutcome>> {
        let mut tx = self.begin().await?;
        let (order_nos, commodities) = create_batch_keys(requests);
        let (levels, stored) = Self::lock_batch(&mut tx, &commodities, &order_nos).await?;
        let plan = plan_create(requests, stored, levels, now_ms)?;
        let writes = BatchWrites { orders: &plan.orders, events: &plan.events, stock: &plan.stock, safe_pay: None };
        Self::write_batch(&mut tx, writes).await?;
        Self::commit(tx).await?;
        Ok(plan.outcomes)
    }

    async fn orders(&self, order_nos: &[OrderNo]) -> PortResult<Vec<Option<Order>>> {
        let found = Self::orders_by_keys(&self.pool, order_nos).await?;
        Ok(order_nos.iter().map(|n| found.get(n).cloned()).collect())
    }

    async fn order(&self, order_no: OrderNo) -> PortResult<Option<Order>> {
        let pool = self.pool.clone();
        self.reads.send(order_no, |batch| read_orders(pool, batch)).await
    }

    async fn orders_of(&self, buyer: Uid, before: Option<OrderNo>, limit: usize) -> PortResult<Vec<Order>> {
        let (before_id, before_shard) = match before {
            Some(order_no) => key(order_no)?,
            None => (i64::MAX, i16::MAX),
        };
        let rows = sqlx::query(
            "SELECT body FROM orders WHERE buyer = $1 AND (order_id, shard) < ($2, $3)
             ORDER BY order_id DESC, shard DESC LIMIT $4",
        )
        .bind(signed(buyer.0)?)
        .bind(before_id)
        .bind(before_shard)
        .bind(signed(limit as u64)?)
        .fetch_all(&self.pool)
        .await
        .map_err(database_error)?;
        rows.iter().map(|row| decode(&row.try_get::<String, _>("body").map_err(database_error)?)).collect()
    }

    async fn audit_view(&self) -> PortResult<(Vec<Order>, Vec<(CommodityId, StockLevel)>)> {
        let mut tx = self.begin().await?;
        // One snapshot for both reads.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(database_error)?;
        let rows = sqlx::query("SELECT body FROM orders").fetch_all(&mut *tx).await.map_err(database_error)?;
        let orders = rows
            .iter()
            .map(|row| decode(&row.try_get::<String, _>("body").map_err(database_error)?))
            .collect::<PortResult<Vec<Order>>>()?;
        let rows =
            sqlx::query("SELECT commodity_id, shop_id, initial, available, version FROM stock ORDER BY commodity_id")
                .fetch_all(&mut *tx)
                .await
                .map_err(database_error)?;
        let stock = rows.iter().map(level_of).collect::<PortResult<Vec<_>>>()?;
        Self::commit(tx).await?;
        Ok((orders, stock))
    }

    async fn change_order(&self, order_no: OrderNo, change: OrderChange, now_ms: u64) -> ChangeResult {
        let pool = self.pool.clone();
        self.changes.send((order_no, change, now_ms), |batch| change_orders(pool, batch)).await
    }

    async fn payments_due(&self, now_ms: u64, limit: usize) -> PortResult<Vec<OrderNo>> {
        let rows = sqlx::query("SELECT order_id, shard FROM safe_pay WHERE due_ms <= $1 ORDER BY due_ms LIMIT $2")
            .bind(signed(now_ms)?)
            .bind(signed(limit as u64)?)
            .fetch_all(&self.pool)
            .await
            .map_err(database_error)?;
        rows.iter()
            .map(|row| {
                let id: i64 = row.try_get("order_id").map_err(database_error)?;
                let shard: i16 = row.try_get("shard").map_err(database_error)?;
                Ok(OrderNo {
                    id: SnowflakeId(unsigned(id)?),
                    buyer_shard: u16::try_from(shard).map_err(|_| PgError::BadRow(format!("shard {shard}")))?,
                })
            })
            .collect()
    }

    async fn postpone_payment_check(&self, order_no: OrderNo, at_ms: u64) -> PortResult<()> {
        let (id, shard) = key(order_no)?;
        // Only an entry still there: a settled payment is not put back.
        sqlx::query("UPDATE safe_pay SET due_ms = $3 WHERE order_id = $1 AND shard = $2")
            .bind(id)
            .bind(shard)
            .bind(signed(at_ms)?)
            .execute(&self.pool)
            .await
            .map_err(database_error)?;
        Ok(())
    }

    async fn payments_pending(&self) -> PortResult<usize> {
        let count: i64 =
            sqlx::query_scalar("SELECT count(*) FROM safe_pay").fetch_one(&self.pool).await.map_err(database_error)?;
        Ok(unsigned(count)? as usize)
    }

    async fn outbox(&self, limit: usize) -> PortResult<Vec<(u64, OutboxEvent)>> {
        let rows = sqlx::query("SELECT id, event FROM outbox ORDER BY id LIMIT $1")
            .bind(signed(limit as u64)?)
            .fetch_all(&self.pool)
            .await
            .map_err(database_error)?;
        rows.iter()
            .map(|row| {
                let id: i64 = row.try_get("id").map_err(database_error)?;
                Ok((unsigned(id)?, decode(&row.try_get::<String, _>("event").map_err(database_error)?)?))
            })
            .collect()
    }

    async fn outbox_done(&self, ids: &[u64]) -> PortResult<()> {
        let raw: Vec<i64> = ids.iter().map(|id| signed(*id)).collect::<PortResult<_>>()?;
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&raw)
            .execute(&self.unsynced)
            .await
            .map_err(database_error)?;
        Ok(())
    }

    async fn idempotency_begin(
        &self,
        buyer: Uid,
        key: &str,
        record: &IdempotencyRecord,
    ) -> PortResult<IdempotencyBegin> {
        let inserted = sqlx::query(
            "INSERT INTO idempotency (buyer, key, record) VALUES ($1, $2, $3) ON CONFLICT (buyer, key) DO NOTHING",
        )
        .bind(signed(buyer.0)?)
        .bind(key)
        .bind(encode(record)?)
        .execute(&self.pool)
        .await
        .map_err(database_error)?
        .rows_affected();
        if inserted == 1 {
            return Ok(IdempotencyBegin::Started);
        }
        let text: String = sqlx::query_scalar("SELECT record FROM idempotency WHERE buyer = $1 AND key = $2")
            .bind(signed(buyer.0)?)
            .bind(key)
            .fetch_one(&self.pool)
            .await
            .map_err(database_error)?;
        Ok(idempotency_seen(decode(&text)?, record))
    }

    async fn idempotency_answer(&self, buyer: Uid, key: &str, answer: StoredAnswer) -> PortResult<()> {
        let mut tx = self.unsynced.begin().await.map_err(database_error)?;
        let text: Option<String> =
            sqlx::query_scalar("SELECT record FROM idempotency WHERE buyer = $1 AND key = $2 FOR UPDATE")
                .bind(signed(buyer.0)?)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await
                .map_err(database_error)?;
        let Some(text) = text else { return Ok(()) };
        let mut record: IdempotencyRecord = decode(&text)?;
        record.answer = Some(answer);
        sqlx::query("UPDATE idempotency SET record = $3 WHERE buyer = $1 AND key = $2")
            .bind(signed(buyer.0)?)
            .bind(key)
            .bind(encode(&record)?)
            .execute(&mut *tx)
            .await
            .map_err(database_error)?;
        Self::commit(tx).await
    }

    async fn meta(&self, key: &str) -> PortResult<Option<u64>> {
        let value: Option<i64> = sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(database_error)?;
        value.map(unsigned).transpose()
    }

    async fn replace_meta(&self, key: &str, expected: Option<u64>, value: u64) -> PortResult<bool> {
        let done = match expected {
            None => sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                .bind(key)
                .bind(signed(value)?),
            Some(expected) => sqlx::query("UPDATE meta SET value = $2 WHERE key = $1 AND value = $3")
                .bind(key)
                .bind(signed(value)?)
                .bind(signed(expected)?),
        }
        .execute(&self.pool)
        .await
        .map_err(database_error)?;
        Ok(done.rows_affected() == 1)
    }

    async fn fence(&self, name: &str, fence: u64) -> PortResult<bool> {
        let largest: i64 = sqlx::query_scalar(
            "INSERT INTO meta (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = GREATEST(meta.value, EXCLUDED.value) RETURNING value",
        )
        .bind(format!("fence:{name}"))
        .bind(signed(fence)?)
        .fetch_one(&self.pool)
        .await
        .map_err(database_error)?;
        Ok(unsigned(largest)? == fence)
    }

    async fn lease(&self, name: &str, holder: u64, now_ms: u64, until_ms: u64) -> PortResult<bool> {
        let row = sqlx::query(
            "INSERT INTO leases (name, holder, until_ms) VALUES ($1, $2, $4)
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, until_ms = EXCLUDED.until_ms
             WHERE leases.holder = EXCLUDED.holder OR leases.until_ms <= $3
             RETURNING holder",
        )
        .bind(name)
        .bind(signed(holder)?)
        .bind(signed(now_ms)?)
        .bind(signed(until_ms)?)
        .fetch_optional(&self.unsynced)
        .await
        .map_err(database_error)?;
        Ok(row.is_some())
    }
}
