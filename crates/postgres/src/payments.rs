//! The payment service's ledger on PostgreSQL, shared by every payment instance: [`PgLedgerBook`] and
//! [`PgCaptureBook`], the storage behind [`orderly_ledger::PaymentLedger`] (which holds the
//! rules). Its tables live in a schema of their own ([`connect_payment_ledger`]), migrated by
//! [`PAYMENT_MIGRATOR`], never mixed with the order store's.
//!
//! A read-decide-write locks the order's entry (`SELECT … FOR UPDATE`), so instances racing on one order
//! serialise on its row; the common path is one statement per step: a first charge is an
//! `INSERT … ON CONFLICT DO NOTHING`, its answer an `UPDATE` guarded by the attempt's key and state. The acquirer's
//! "first writer wins" is the primary key of its records.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use orderly_app::PortError;
use orderly_app::group::Group;
use orderly_app::ports::{ChargeRequest, PortResult, RefundOutcome};
use orderly_domain::{Money, OrderNo};
use orderly_ledger::{
    CaptureBook, CaptureRecord, ChargeStep, LedgerBook, LedgerConfig, LedgerEntry, LedgerState, RefundStep,
    charge_step, refund_step, settle_step,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};

use crate::error::PgError;
use crate::{Tx, database_error, decode, encode};

/// The payment ledger's migrations, embedded in the binary.
pub static PAYMENT_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./payment-migrations");

/// Connects to the payment ledger in `schema` (created if absent; a plain lower-case identifier), with a
/// pool of `connections_max` (and half that, lazily, for the unsynced answers) following `primary`, and
/// brings it up to date. Returns the two books.
pub async fn connect_payment_ledger(
    options: PgConnectOptions,
    schema: &str,
    connections_max: u32,
    primary: &Arc<crate::Primary>,
) -> PortResult<(Arc<PgLedgerBook>, Arc<PgCaptureBook>)> {
    let plain = schema.starts_with(|c: char| c.is_ascii_lowercase())
        && schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !plain || schema.len() > 63 {
        return Err(PgError::SchemaName(schema.to_owned()).into());
    }
    let options = crate::session_options(options);
    let admin = PgPoolOptions::new().max_connections(1).connect_with(options.clone()).await.map_err(database_error)?;
    // Checked above: only [a-z0-9_].
    let create = format!("CREATE SCHEMA IF NOT EXISTS {schema}");
    let created = sqlx::query(sqlx::AssertSqlSafe(create.clone())).execute(&admin).await;
    if created.is_err() {
        // Two instances creating it at once: one loses the race on the catalog; the schema is there now.
        sqlx::query(sqlx::AssertSqlSafe(create)).execute(&admin).await.map_err(database_error)?;
    }
    admin.close().await;
    let pool_options = options.clone().options([("search_path", schema)]);
    let pool = primary
        .pool_options()
        .max_connections(connections_max)
        .connect_with(pool_options.clone())
        .await
        .map_err(database_error)?;
    primary.follow(&pool, pool_options);
    PAYMENT_MIGRATOR.run(&pool).await.map_err(PgError::Migration)?;
    let unsynced_options = options.options([("search_path", schema), ("synchronous_commit", "off")]);
    let unsynced = primary
        .pool_options()
        .max_connections((connections_max / 2).max(2))
        .connect_lazy_with(unsynced_options.clone());
    primary.follow(&unsynced, unsynced_options);
    let ledger = PgLedgerBook {
        pool: pool.clone(),
        unsynced,
        firsts: Arc::new(Group::new("payments")),
        answers: Arc::new(Group::new("payments")),
    };
    Ok((Arc::new(ledger), Arc::new(PgCaptureBook { pool, records: Arc::new(Group::new("acquirer")) })))
}

#[derive(Debug, Clone)]
pub struct PgLedgerBook {
    pool: PgPool,
    /// `synchronous_commit = off`, for settling only: a settled state copies the acquirer's durable
    /// record, so one lost in a crash is copied again (see `LedgerBook`); the charge does not wait for
    /// a WAL flush to answer.
    unsynced: PgPool,
    /// Concurrent first charges' entries, written by one statement a batch.
    firsts: Arc<Group<Entry, bool>>,
    /// Concurrent answers of running attempts, written by one statement a batch.
    answers: Arc<Group<Entry, bool>>,
}

/// An entry as written: order number, idempotency key, state, body.
type Entry = (String, String, &'static str, String);

fn entry_row(order_no: OrderNo, entry: &LedgerEntry) -> PortResult<Entry> {
    Ok((order_no.to_string(), entry.idempotency_key.clone(), entry.state.as_str(), encode(entry)?))
}

/// Runs `sql` once for a batch of rows (bound as four text arrays, the rows' columns in order) and
/// answers for each row whether the statement wrote it: its key among those the statement returned
/// (`returned` reads one from a returned row). A key twice in a batch is sent once: its later rows are
/// answered `false`, as if they came after the first — their callers then read what the first wrote.
async fn write_once_each<K: Eq + std::hash::Hash>(
    pool: &PgPool,
    sql: &'static str,
    batch: Vec<Entry>,
    key: impl Fn(&Entry) -> K,
    returned: impl Fn(&sqlx::postgres::PgRow) -> Result<K, sqlx::Error>,
) -> Vec<PortResult<bool>> {
    let mut seen = HashSet::new();
    let first: Vec<bool> = batch.iter().map(|row| seen.insert(key(row))).collect();
    let sent: Vec<&Entry> = batch.iter().zip(&first).filter(|(_, first)| **first).map(|(row, _)| row).collect();
    let written = sqlx::query(sql)
        .bind(sent.iter().map(|r| r.0.as_str()).collect::<Vec<_>>())
        .bind(sent.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
        .bind(sent.iter().map(|r| r.2).collect::<Vec<_>>())
        .bind(sent.iter().map(|r| r.3.as_str()).collect::<Vec<_>>())
        .fetch_all(pool)
        .await
        .and_then(|rows| rows.iter().map(&returned).collect::<Result<HashSet<K>, _>>())
        .map_err(database_error);
    match written {
        Ok(written) => batch.iter().zip(first).map(|(row, first)| Ok(first && written.contains(&key(row)))).collect(),
        Err(error) => batch.iter().map(|_| Err(error.clone())).collect(),
    }
}

/// First charges' entries, each unless its order has one already.
async fn insert_entries(pool: PgPool, batch: Vec<Entry>) -> Vec<PortResult<bool>> {
    let sql = "INSERT INTO payment_ledger (order_no, idempotency_key, state, body)
               SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[])
               ON CONFLICT (order_no) DO NOTHING RETURNING order_no";
    write_once_each(&pool, sql, batch, |row| row.0.clone(), |row| row.try_get("order_no")).await
}

/// Running attempts' answers, each only over its own attempt's PROCESSING entry.
async fn settle_entries(pool: PgPool, batch: Vec<Entry>) -> Vec<PortResult<bool>> {
    let sql = "UPDATE payment_ledger SET state = u.state, body = u.body
               FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) AS u(order_no, idempotency_key, state, body)
               WHERE payment_ledger.order_no = u.order_no AND payment_ledger.idempotency_key = u.idempotency_key
                 AND payment_ledger.state = 'processing'
               RETURNING payment_ledger.order_no, payment_ledger.idempotency_key";
    let key = |row: &Entry| (row.0.clone(), row.1.clone());
    write_once_each(&pool, sql, batch, key, |row| Ok((row.try_get("order_no")?, row.try_get("idempotency_key")?))).await
}

/// Acquirer records, each unless its capture id has one already (first writer wins).
async fn insert_records(pool: PgPool, batch: Vec<Entry>) -> Vec<PortResult<bool>> {
    let sql = "INSERT INTO acquirer_records (capture_id, order_no, outcome, body)
               SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[])
               ON CONFLICT (capture_id) DO NOTHING RETURNING capture_id";
    write_once_each(&pool, sql, batch, |row| row.0.clone(), |row| row.try_get("capture_id")).await
}

impl PgLedgerBook {
    async fn lock(tx: &mut Tx, order_no: OrderNo) -> PortResult<Option<LedgerEntry>> {
        let row = sqlx::query("SELECT body FROM payment_ledger WHERE order_no = $1 FOR UPDATE")
            .bind(order_no.to_string())
            .fetch_optional(&mut **tx)
            .await
            .map_err(database_error)?;
        row.map(|row| decode(&row.try_get::<String, _>("body").map_err(database_error)?)).transpose()
    }

    async fn update(tx: &mut Tx, order_no: OrderNo, entry: &LedgerEntry) -> PortResult<()> {
        sqlx::query("UPDATE payment_ledger SET idempotency_key = $2, state = $3, body = $4 WHERE order_no = $1")
            .bind(order_no.to_string())
            .bind(&entry.idempotency_key)
            .bind(entry.state.as_str())
            .bind(encode(entry)?)
            .execute(&mut **tx)
            .await
            .map_err(database_error)?;
        Ok(())
    }

    /// Writes the entry of a first charge; false if the order has one already.
    async fn insert(&self, order_no: OrderNo, entry: &LedgerEntry) -> PortResult<bool> {
        let pool = self.pool.clone();
        self.firsts.send(entry_row(order_no, entry)?, |batch| insert_entries(pool, batch)).await
    }
}

#[async_trait]
impl LedgerBook for PgLedgerBook {
    async fn entry(&self, order_no: OrderNo) -> PortResult<Option<LedgerEntry>> {
        let row = sqlx::query("SELECT body FROM payment_ledger WHERE order_no = $1")
            .bind(order_no.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(database_error)?;
        row.map(|row| decode(&row.try_get::<String, _>("body").map_err(database_error)?)).transpose()
    }

    async fn begin_charge(
        &self,
        request: &ChargeRequest,
        now_ms: u64,
        config: &LedgerConfig,
    ) -> PortResult<ChargeStep> {
        let order_no = request.order_no;
        let first = charge_step(None, request, now_ms, config);
        if let ChargeStep::Start(entry) = &first
            && self.insert(order_no, entry).await?
        {
            return Ok(first);
        }
        let mut tx = self.pool.begin().await.map_err(database_error)?;
        let Some(entry) = Self::lock(&mut tx, order_no).await? else {
            // No entry, and the first charge's insert did not run (too late) or lost to one now gone:
            // entries are never deleted, so only the former.
            return match first {
                ChargeStep::Start(_) => Err(PortError::unavailable("payments", "ledger entry vanished; retry")),
                step => Ok(step),
            };
        };
        let step = charge_step(Some(&entry), request, now_ms, config);
        if let ChargeStep::Start(started) = &step {
            Self::update(&mut tx, order_no, started).await?;
        }
        tx.commit().await.map_err(database_error)?;
        Ok(step)
    }

    async fn settle(
        &self,
        order_no: OrderNo,
        running: &LedgerEntry,
        state: LedgerState,
    ) -> PortResult<Option<LedgerEntry>> {
        // One statement: the running attempt's PROCESSING entry is identified by its key (written once).
        if let Some(settled) = settle_step(running, &running.idempotency_key, state) {
            let pool = self.unsynced.clone();
            if self.answers.send(entry_row(order_no, &settled)?, |batch| settle_entries(pool, batch)).await? {
                return Ok(Some(settled));
            }
        }
        self.entry(order_no).await
    }

    async fn refund(&self, order_no: OrderNo, amount: Money, refund_key: &str) -> PortResult<RefundOutcome> {
        let mut tx = self.pool.begin().await.map_err(database_error)?;
        let entry = Self::lock(&mut tx, order_no).await?;
        let outcome = match refund_step(entry.as_ref(), amount, refund_key)? {
            RefundStep::Answer(outcome) => outcome,
            RefundStep::Record(entry, outcome) => {
                Self::update(&mut tx, order_no, &entry).await?;
                outcome
            }
        };
        tx.commit().await.map_err(database_error)?;
        Ok(outcome)
    }
}

#[derive(Debug, Clone)]
pub struct PgCaptureBook {
    pool: PgPool,
    /// Concurrent records, written by one statement a batch.
    records: Arc<Group<Entry, bool>>,
}

#[async_trait]
impl CaptureBook for PgCaptureBook {
    async fn record_first(&self, capture_id: &str, record: &CaptureRecord) -> PortResult<CaptureRecord> {
        let row = (capture_id.to_owned(), record.order_no.to_string(), record.outcome.as_str(), encode(record)?);
        let pool = self.pool.clone();
        if self.records.send(row, |batch| insert_records(pool, batch)).await? {
            return Ok(record.clone());
        }
        // The conflict waited for the other writer's commit: a new statement sees its record.
        let row = sqlx::query("SELECT body FROM acquirer_records WHERE capture_id = $1")
            .bind(capture_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(database_error)?;
        let body = row.ok_or_else(|| PortError::unavailable("acquirer", "record vanished; retry"))?;
        decode(&body.try_get::<String, _>("body").map_err(database_error)?)
    }

    async fn captured(&self) -> PortResult<Vec<(OrderNo, String)>> {
        let rows = sqlx::query("SELECT capture_id, body FROM acquirer_records WHERE outcome = 'captured'")
            .fetch_all(&self.pool)
            .await
            .map_err(database_error)?;
        rows.iter()
            .map(|row| {
                let record: CaptureRecord = decode(&row.try_get::<String, _>("body").map_err(database_error)?)?;
                Ok((record.order_no, row.try_get::<String, _>("capture_id").map_err(database_error)?))
            })
            .collect()
    }
}
