//! [`LocalStore`]: the `Store` port on fjall.
//!
//! Read-check-write sections (stock decrements, transitions, payments, idempotency) run under one
//! writer lock, so a check and its write are atomic; each section ends in one atomic batch, and the
//! caller is answered after a group-commit sync that covers it.
//!
//! Opened with its bus ([`LocalStore::with_bus`], as the standalone profile is), a change's timers and
//! charges are written as bus messages in the change's own batch: store and bus share one journal, so
//! the write that changes the order is the one that queues its messages, and only restocks (the cache's,
//! in memory) go through the outbox and its relay.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;
use orderly_app::PortError;
use orderly_app::model::{IdempotencyRecord, Order, OutboxEvent, Outgoing, StockLevel, StoredAnswer};
use orderly_app::ports::{
    ChangeRejection, ChangeResult, CreateOutcome, CreateRequest, IdempotencyBegin, OrderChange, PortResult, Store,
};
use orderly_app::store_rules::{
    CATALOG_VERSION, Levels, SafePay, create_batch_keys, idempotency_seen, plan_change, plan_create, stock_to_lock,
};
use orderly_domain::{CatalogEntry, CommodityId, OrderNo, OrderState, Uid};

use crate::bus::LocalBus;
use crate::db::{LocalDb, key_u64, last_sequence, u64_key};
use crate::error::LocalError;
use crate::{decode, encode, storage_error};

#[derive(Debug)]
pub struct LocalStore {
    db: LocalDb,
    /// Serialises read-check-write sections; reads outside them see committed batches only.
    writer: tokio::sync::Mutex<()>,
    outbox_sequence: AtomicU64,
    /// No outbox event has a smaller id: scans start here instead of walking the tombstones of every
    /// event ever relayed (ids grow in commit order, under the writer lock).
    outbox_low_water: AtomicU64,
    /// No safe-pay entry is due before this (ms); read and written under the writer lock.
    safe_pay_low_water_ms: AtomicU64,
    /// How many orders the safe-pay set holds (`payments_pending`): counted once at open, then kept by the
    /// sections that enter and leave it, after their batch commits. fjall's `len()` walks the whole
    /// keyspace, tombstones of every settled payment included: 30 ms on a runtime thread after a minute of
    /// load, at every `/metrics` scrape, `/api/admin/bus` and dashboard refresh (docs/BENCHMARKS.md).
    payments_pending: AtomicUsize,
    /// The bus on the same database: outbox events that are messages go straight to it.
    bus: Option<Arc<LocalBus>>,
}

/// One section's atomic write: its batch, the bus messages staged in it, and what it does to the
/// safe-pay set's count (applied once the batch is committed).
struct Write {
    batch: fjall::OwnedWriteBatch,
    messages: Vec<Vec<u8>>,
    safe_pay: SafePayCount,
}

/// A write's change to the number of payments without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SafePayCount {
    Same,
    Entered,
    Left,
}

impl Write {
    /// `messages` onto `bus` in this write, their keys kept for [`LocalBus::landed`] after the commit.
    fn stage(&mut self, bus: &LocalBus, messages: impl IntoIterator<Item = Outgoing>) -> PortResult<()> {
        let keys = bus.stage(&mut self.batch, messages)?;
        self.messages.extend(keys);
        Ok(())
    }
}

fn buyer_key(buyer: Uid, order_no: OrderNo) -> Vec<u8> {
    let mut key = buyer.0.to_be_bytes().to_vec();
    key.extend_from_slice(&order_no.to_key());
    key
}

fn due_key(due_ms: u64, order_no: OrderNo) -> Vec<u8> {
    let mut key = due_ms.to_be_bytes().to_vec();
    key.extend_from_slice(&order_no.to_key());
    key
}

fn idempotency_key(buyer: Uid, key: &str) -> Vec<u8> {
    let mut bytes = buyer.0.to_be_bytes().to_vec();
    bytes.extend_from_slice(key.as_bytes());
    bytes
}

impl LocalStore {
    pub fn new(db: LocalDb) -> Result<LocalStore, PortError> {
        let outbox_sequence = AtomicU64::new(last_sequence(&db.outbox)?);
        let payments_pending = AtomicUsize::new(db.safe_pay.len().map_err(storage_error)?);
        Ok(LocalStore {
            db,
            writer: tokio::sync::Mutex::new(()),
            outbox_sequence,
            outbox_low_water: AtomicU64::new(0),
            safe_pay_low_water_ms: AtomicU64::new(0),
            payments_pending,
            bus: None,
        })
    }

    /// A store whose outbox events that are messages (unpaid timeouts, charges) are written to `bus`
    /// in the change's own batch instead of waiting for the relay: `bus` must be on the same database.
    pub fn with_bus(db: LocalDb, bus: Arc<LocalBus>) -> Result<LocalStore, PortError> {
        Ok(LocalStore { bus: Some(bus), ..LocalStore::new(db)? })
    }

    fn write(&self) -> Write {
        Write { batch: self.db.batch(), messages: Vec::new(), safe_pay: SafePayCount::Same }
    }

    fn commit(&self, write: Write) -> PortResult<()> {
        write.batch.commit().map_err(storage_error)?;
        match write.safe_pay {
            SafePayCount::Same => {}
            SafePayCount::Entered => {
                self.payments_pending.fetch_add(1, Ordering::SeqCst);
            }
            SafePayCount::Left => {
                self.payments_pending.fetch_sub(1, Ordering::SeqCst);
            }
        }
        match &self.bus {
            Some(bus) if !write.messages.is_empty() => bus.landed(&write.messages),
            _ => Ok(()),
        }
    }

    /// A task waiting for it yields its thread to others: a create batch holds it for its reads, plan
    /// and write (hundreds of µs), and a runtime thread blocked meanwhile would stall every request on it.
    /// It guards no data of its own (each section ends in one atomic batch, with no await inside).
    async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.writer.lock().await
    }

    fn read_order(&self, order_no: OrderNo) -> PortResult<Option<Order>> {
        self.db.orders.get(order_no.to_key()).map_err(storage_error)?.map(|bytes| decode(&bytes)).transpose()
    }

    fn read_stock(&self, id: CommodityId) -> PortResult<Option<StockLevel>> {
        self.db.stock.get(u64_key(id.0)).map_err(storage_error)?.map(|bytes| decode(&bytes)).transpose()
    }

    /// Every stock ledger, by commodity. Found through the catalog (every ledger is a catalog entry's,
    /// and the catalog is rarely rewritten) and read one by one: a walk of the stock keyspace itself passes
    /// every version of every row its memtables hold — each create and close writes its commodities'
    /// rows again — where a point read finds the newest at once.
    fn read_all_stock(&self) -> PortResult<Vec<(CommodityId, StockLevel)>> {
        let mut all = Vec::new();
        for guard in self.db.catalog.iter() {
            let key = guard.key().map_err(storage_error)?;
            let id = key_u64(&key).ok_or_else(|| PortError::from(LocalError::BadKey("catalog")))?;
            if let Some(level) = self.read_stock(CommodityId(id))? {
                all.push((CommodityId(id), level));
            }
        }
        Ok(all)
    }

    /// Writes `order`; `indexed`: the buyer's index already names it (an order's buyer never changes),
    /// so only its first write adds the index entry.
    fn put_order(&self, batch: &mut fjall::OwnedWriteBatch, order: &Order, indexed: bool) -> PortResult<()> {
        batch.insert(&self.db.orders, order.order_no.to_key(), encode(order)?);
        if !indexed {
            batch.insert(&self.db.orders_by_buyer, buyer_key(order.buyer, order.order_no), []);
        }
        Ok(())
    }

    /// Pending views of `orders`, each if absent only: a fast worker may have created it already.
    fn put_pending(&self, write: &mut Write, orders: &[Order]) -> PortResult<()> {
        for order in orders {
            if !self.db.orders.contains_key(order.order_no.to_key()).map_err(storage_error)? {
                self.put_order(&mut write.batch, order, false)?;
            }
        }
        Ok(())
    }

    /// An outbox event in `write`: straight onto the bus when it is a message and the bus is here.
    fn put_outbox(&self, write: &mut Write, event: &OutboxEvent, now_ms: u64) -> PortResult<()> {
        if let Some(bus) = &self.bus
            && let Some(message) = event.message(now_ms)
        {
            return write.stage(bus, [message]);
        }
        let id = self.outbox_sequence.fetch_add(1, Ordering::SeqCst) + 1;
        write.batch.insert(&self.db.outbox, u64_key(id), encode(event)?);
        Ok(())
    }

    /// Puts `order_no` in the safe-pay set, due at `due_ms` (replacing an entry it has: the caller
    /// removed it in the same batch, or it has none).
    fn enter_safe_pay(&self, batch: &mut fjall::OwnedWriteBatch, order_no: OrderNo, due_ms: u64) {
        batch.insert(&self.db.safe_pay, order_no.to_key(), u64_key(due_ms));
        batch.insert(&self.db.safe_pay_due, due_key(due_ms, order_no), []);
        self.safe_pay_low_water_ms.fetch_min(due_ms, Ordering::SeqCst);
    }

    /// Takes `order_no` out of the safe-pay set; whether it was in.
    fn remove_safe_pay(&self, batch: &mut fjall::OwnedWriteBatch, order_no: OrderNo) -> PortResult<bool> {
        let Some(due) = self.db.safe_pay.get(order_no.to_key()).map_err(storage_error)? else { return Ok(false) };
        let due_ms = key_u64(&due).unwrap_or(0);
        batch.remove(&self.db.safe_pay_due, due_key(due_ms, order_no));
        batch.remove(&self.db.safe_pay, order_no.to_key());
        Ok(true)
    }
}

#[async_trait]
impl Store for LocalStore {
    async fn put_commodities(&self, entries: &[CatalogEntry]) -> PortResult<()> {
        {
            // Under the writer lock: two catalog writes never read the same version.
            let _writer = self.lock().await;
            let version = self.catalog_version().await?;
            let mut batch = self.db.batch();
            for entry in entries {
                batch.insert(&self.db.catalog, u64_key(entry.commodity_id.0), encode(entry)?);
            }
            batch.insert(&self.db.meta, CATALOG_VERSION, u64_key(version + 1));
            batch.commit().map_err(storage_error)?;
        }
        self.db.sync().await
    }

    async fn commodity(&self, id: CommodityId) -> PortResult<Option<CatalogEntry>> {
        self.db.catalog.get(u64_key(id.0)).map_err(storage_error)?.map(|bytes| decode(&bytes)).transpose()
    }

    async fn catalog_version(&self) -> PortResult<u64> {
        Ok(self.meta(CATALOG_VERSION).await?.unwrap_or(0))
    }

    async fn add_stock(&self, id: CommodityId, quantity: u64) -> PortResult<StockLevel> {
        let level = {
            let _writer = self.lock().await;
            let mut level = match self.read_stock(id)? {
                Some(level) => level,
                None => {
                    // Stock belongs to a commodity of the catalog: its shop comes from there.
                    let entry: CatalogEntry = self
                        .db
                        .catalog
                        .get(u64_key(id.0))
                        .map_err(storage_error)?
                        .map(|bytes| decode::<CatalogEntry>(&bytes))
                        .transpose()?
                        .ok_or_else(|| PortError::from(LocalError::StockWithoutCatalog(id)))?;
                    StockLevel { shop_id: entry.shop_id, initial: 0, available: 0, version: 0 }
                }
            };
            level.initial += quantity;
            level.available += quantity;
            level.version += 1;
            self.db.stock.insert(u64_key(id.0), encode(&level)?).map_err(storage_error)?;
            level
        };
        self.db.sync().await?;
        Ok(level)
    }

    async fn stock(&self, ids: &[CommodityId]) -> PortResult<Vec<Option<StockLevel>>> {
        ids.iter().map(|id| self.read_stock(*id)).collect()
    }

    async fn all_stock(&self) -> PortResult<Vec<(CommodityId, StockLevel)>> {
        self.read_all_stock()
    }

    async fn insert_pending(&self, orders: &[Order]) -> PortResult<()> {
        let _writer = self.lock().await;
        let mut write = self.write();
        self.put_pending(&mut write, orders)?;
        self.commit(write)
    }

    async fn insert_pending_publishing(
        &self,
        orders: &[Order],
        creates: Vec<Outgoing>,
    ) -> PortResult<Option<Vec<Outgoing>>> {
        let Some(bus) = &self.bus else { return self.insert_pending(orders).await.map(|()| Some(creates)) };
        {
            let _writer = self.lock().await;
            let mut write = self.write();
            self.put_pending(&mut write, orders)?;
            write.stage(bus, creates)?;
            self.commit(write)?;
        }
        self.db.sync().await?;
        Ok(None)
    }

    async fn forget_pending(&self, order_nos: &[OrderNo]) -> PortResult<()> {
        let _writer = self.lock().await;
        let mut batch = self.db.batch();
        for &order_no in order_nos {
            if let Some(order) = self.read_order(order_no)?.filter(|o| o.state == OrderState::Pending) {
                batch.remove(&self.db.orders, order_no.to_key());
                batch.remove(&self.db.orders_by_buyer, buyer_key(order.buyer, order_no));
            }
        }
        batch.commit().map_err(storage_error)
    }

    async fn create_orders(&self, requests: &[CreateRequest], now_ms: u64) -> PortResult<Vec<CreateOutcome>> {
        let outcomes = {
            let _writer = self.lock().await;
            let (order_nos, commodities) = create_batch_keys(requests);
            let mut stored = std::collections::HashMap::with_capacity(order_nos.len());
            for order_no in order_nos {
                if let Some(order) = self.read_order(order_no)? {
                    stored.insert(order_no, order);
                }
            }
            let mut levels = Levels::new();
            for id in commodities {
                if let Some(level) = self.read_stock(id)? {
                    levels.insert(id, level);
                }
            }
            // Their pending views (or earlier creates) put them in the buyer's index already.
            let indexed: std::collections::HashSet<OrderNo> = stored.keys().copied().collect();
            let plan = plan_create(requests, stored, levels, now_ms)?;
            let mut write = self.write();
            for order in &plan.orders {
                self.put_order(&mut write.batch, order, indexed.contains(&order.order_no))?;
            }
            for event in &plan.events {
                self.put_outbox(&mut write, event, now_ms)?;
            }
            for (id, level) in &plan.stock {
                write.batch.insert(&self.db.stock, u64_key(id.0), encode(level)?);
            }
            self.commit(write)?;
            plan.outcomes
        };
        self.db.sync().await?;
        Ok(outcomes)
    }

    async fn order(&self, order_no: OrderNo) -> PortResult<Option<Order>> {
        self.read_order(order_no)
    }

    async fn orders_of(&self, buyer: Uid, before: Option<OrderNo>, limit: usize) -> PortResult<Vec<Order>> {
        let start = buyer_key(
            buyer,
            OrderNo::from_key(&[0; 10]).unwrap_or(OrderNo { id: orderly_domain::SnowflakeId(0), buyer_shard: 0 }),
        );
        let end = match before {
            Some(before) => buyer_key(buyer, before),
            None => {
                let mut end = (buyer.0 + 1).to_be_bytes().to_vec();
                end.extend_from_slice(&[0; 10]);
                end
            }
        };
        let mut orders = Vec::new();
        for guard in self.db.orders_by_buyer.range(start..end).rev().take(limit) {
            let (key, _) = guard.into_inner().map_err(storage_error)?;
            let order_no = key
                .get(8..)
                .and_then(OrderNo::from_key)
                .ok_or_else(|| PortError::from(LocalError::BadKey("buyer index")))?;
            if let Some(order) = self.read_order(order_no)? {
                orders.push(order);
            }
        }
        Ok(orders)
    }

    async fn pending_orders(&self) -> PortResult<Vec<Order>> {
        // Read rarely (a counter loaded after the cache lost it): a scan, no index kept for it.
        let mut pending = Vec::new();
        for guard in self.db.orders.iter() {
            let order: Order = decode(&guard.into_inner().map_err(storage_error)?.1)?;
            if order.state == OrderState::Pending {
                pending.push(order);
            }
        }
        Ok(pending)
    }

    async fn audit_view(&self) -> PortResult<(Vec<Order>, Vec<(CommodityId, StockLevel)>)> {
        // Every write section commits under the writer lock, so holding it gives one moment's view.
        let _writer = self.lock().await;
        let orders = self
            .db
            .orders
            .iter()
            .map(|guard| decode(&guard.into_inner().map_err(storage_error)?.1))
            .collect::<PortResult<Vec<Order>>>()?;
        Ok((orders, self.read_all_stock()?))
    }

    async fn change_order(&self, order_no: OrderNo, change: OrderChange, now_ms: u64) -> ChangeResult {
        let changed = {
            let _writer = self.lock().await;
            let Some(order) = self.read_order(order_no)? else { return Ok(Err(ChangeRejection::NotFound)) };
            let mut levels = Levels::new();
            for id in stock_to_lock(&order, &change) {
                if let Some(level) = self.read_stock(id)? {
                    levels.insert(id, level);
                }
            }
            let plan = match plan_change(order, change, levels, now_ms)? {
                Ok(plan) => plan,
                Err(rejection) => return Ok(Err(rejection)),
            };
            let mut write = self.write();
            for (id, level) in &plan.stock {
                write.batch.insert(&self.db.stock, u64_key(id.0), encode(level)?);
            }
            if let Some(event) = &plan.event {
                self.put_outbox(&mut write, event, now_ms)?;
            }
            match plan.safe_pay {
                SafePay::Untouched => {}
                SafePay::Enter { due_ms } => {
                    // An entry it has is replaced, not counted again (none: an attempt in flight refuses
                    // another).
                    if !self.remove_safe_pay(&mut write.batch, order_no)? {
                        write.safe_pay = SafePayCount::Entered;
                    }
                    self.enter_safe_pay(&mut write.batch, order_no, due_ms);
                }
                // A late answer for an order settled already finds it out of the set: nothing to count.
                SafePay::Leave => {
                    if self.remove_safe_pay(&mut write.batch, order_no)? {
                        write.safe_pay = SafePayCount::Left;
                    }
                }
            }
            // It was read above: the buyer's index names it.
            self.put_order(&mut write.batch, &plan.order, true)?;
            self.commit(write)?;
            plan.order
        };
        self.db.sync().await?;
        Ok(Ok(changed))
    }

    async fn payments_due(&self, now_ms: u64, limit: usize) -> PortResult<Vec<OrderNo>> {
        // Under the writer lock, so no entry is added while the low water moves: scans then skip the
        // tombstones of settled payments.
        let _writer = self.lock().await;
        let low_ms = self.safe_pay_low_water_ms.load(Ordering::SeqCst);
        let end_ms = now_ms.saturating_add(1);
        let mut due = Vec::new();
        let mut first_ms = None;
        for guard in self.db.safe_pay_due.range(u64_key(low_ms).to_vec()..u64_key(end_ms).to_vec()).take(limit) {
            let (key, _) = guard.into_inner().map_err(storage_error)?;
            first_ms.get_or_insert_with(|| key_u64(&key).unwrap_or(0));
            due.push(
                key.get(8..)
                    .and_then(OrderNo::from_key)
                    .ok_or_else(|| PortError::from(LocalError::BadKey("safe-pay")))?,
            );
        }
        self.safe_pay_low_water_ms.store(first_ms.unwrap_or(end_ms), Ordering::SeqCst);
        Ok(due)
    }

    async fn postpone_payment_check(&self, order_no: OrderNo, at_ms: u64) -> PortResult<()> {
        let _writer = self.lock().await;
        let mut batch = self.db.batch();
        if !self.remove_safe_pay(&mut batch, order_no)? {
            return Ok(());
        }
        self.enter_safe_pay(&mut batch, order_no, at_ms);
        // Not synced: a lost postponement only makes the check come sooner.
        batch.commit().map_err(storage_error)
    }

    async fn payments_pending(&self) -> PortResult<usize> {
        Ok(self.payments_pending.load(Ordering::SeqCst))
    }

    async fn outbox(&self, limit: usize) -> PortResult<Vec<(u64, OutboxEvent)>> {
        let mut events = Vec::new();
        let low = self.outbox_low_water.load(Ordering::SeqCst);
        for guard in self.db.outbox.range(u64_key(low)..).take(limit) {
            let (key, value) = guard.into_inner().map_err(storage_error)?;
            let id = key_u64(&key).ok_or_else(|| PortError::from(LocalError::BadKey("outbox")))?;
            events.push((id, decode(&value)?));
        }
        if let Some((first, _)) = events.first() {
            self.outbox_low_water.fetch_max(*first, Ordering::SeqCst);
        }
        Ok(events)
    }

    async fn outbox_done(&self, ids: &[u64]) -> PortResult<()> {
        let mut batch = self.db.batch();
        for id in ids {
            batch.remove(&self.db.outbox, u64_key(*id));
        }
        batch.commit().map_err(storage_error)
    }

    async fn idempotency_begin(
        &self,
        buyer: Uid,
        key: &str,
        record: &IdempotencyRecord,
    ) -> PortResult<IdempotencyBegin> {
        {
            let _writer = self.lock().await;
            let storage_key = idempotency_key(buyer, key);
            if let Some(bytes) = self.db.idempotency.get(&storage_key).map_err(storage_error)? {
                return Ok(idempotency_seen(decode(&bytes)?, record));
            }
            self.db.idempotency.insert(storage_key, encode(record)?).map_err(storage_error)?;
        }
        self.db.sync().await?;
        Ok(IdempotencyBegin::Started)
    }

    async fn idempotency_answer(&self, buyer: Uid, key: &str, answer: StoredAnswer) -> PortResult<()> {
        let _writer = self.lock().await;
        let storage_key = idempotency_key(buyer, key);
        let Some(bytes) = self.db.idempotency.get(&storage_key).map_err(storage_error)? else { return Ok(()) };
        let mut record: IdempotencyRecord = decode(&bytes)?;
        record.answer = Some(answer);
        self.db.idempotency.insert(storage_key, encode(&record)?).map_err(storage_error)
    }

    async fn meta(&self, key: &str) -> PortResult<Option<u64>> {
        Ok(self.db.meta.get(key).map_err(storage_error)?.and_then(|bytes| key_u64(&bytes)))
    }

    async fn replace_meta(&self, key: &str, expected: Option<u64>, value: u64) -> PortResult<bool> {
        {
            let _writer = self.lock().await;
            let now = self.db.meta.get(key).map_err(storage_error)?.and_then(|bytes| key_u64(&bytes));
            if now != expected {
                return Ok(false);
            }
            self.db.meta.insert(key, u64_key(value)).map_err(storage_error)?;
        }
        self.db.sync().await?;
        Ok(true)
    }

    async fn fence(&self, name: &str, fence: u64) -> PortResult<bool> {
        let key = format!("fence:{name}");
        let _writer = self.lock().await;
        let largest = self.db.meta.get(&key).map_err(storage_error)?.and_then(|bytes| key_u64(&bytes)).unwrap_or(0);
        if fence < largest {
            return Ok(false);
        }
        self.db.meta.insert(&key, u64_key(fence)).map_err(storage_error)?;
        Ok(true)
    }

    async fn lease(&self, name: &str, holder: u64, now_ms: u64, until_ms: u64) -> PortResult<bool> {
        let (holder_key, until_key) = (format!("lease:{name}:holder"), format!("lease:{name}:until"));
        let _writer = self.lock().await;
        let read = |key: &str| -> PortResult<Option<u64>> {
            Ok(self.db.meta.get(key).map_err(storage_error)?.and_then(|bytes| key_u64(&bytes)))
        };
        let free = read(&until_key)?.is_none_or(|until| until <= now_ms);
        if !free && read(&holder_key)? != Some(holder) {
            return Ok(false);
        }
        self.db.meta.insert(&holder_key, u64_key(holder)).map_err(storage_error)?;
        self.db.meta.insert(&until_key, u64_key(until_ms)).map_err(storage_error)?;
        Ok(true)
    }
}
