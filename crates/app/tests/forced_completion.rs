//! Issue 10: every answer tells the buyer the truth. Faults injected through the ports: the store losing
//! the steps after the create is durable, and a publish that lands but answers an error.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use common::*;
use orderly_app::model::{
    Delivery, IdempotencyRecord, Order, OutboxEvent, Outgoing, PaymentAttempt, StockLevel, StoredAnswer, Topic,
};
use orderly_app::ports::{
    BusDepth, ChangeRejection, CreateOutcome, CreateRequest, IdempotencyBegin, PaymentResult, PortError, PortResult,
};
use orderly_app::{Bus, PlaceError, Store};
use orderly_domain::{CatalogEntry, CommodityId, OrderAction, OrderNo, OrderState, Uid};

/// A store whose writes after the create's publish fail while `down` is set (PostgreSQL going away
/// right after the bus took the create).
#[derive(Debug)]
struct AfterPublishFails {
    inner: Arc<dyn Store>,
    down: AtomicBool,
}

impl AfterPublishFails {
    fn check(&self) -> PortResult<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(PortError::unavailable("store", "injected: down"));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for AfterPublishFails {
    async fn put_commodities(&self, entries: &[CatalogEntry]) -> PortResult<()> {
        self.inner.put_commodities(entries).await
    }
    async fn commodity(&self, id: CommodityId) -> PortResult<Option<CatalogEntry>> {
        self.inner.commodity(id).await
    }
    async fn add_stock(&self, id: CommodityId, quantity: u64) -> PortResult<StockLevel> {
        self.inner.add_stock(id, quantity).await
    }
    async fn stock(&self, ids: &[CommodityId]) -> PortResult<Vec<Option<StockLevel>>> {
        self.inner.stock(ids).await
    }
    async fn all_stock(&self) -> PortResult<Vec<(CommodityId, StockLevel)>> {
        self.inner.all_stock().await
    }
    async fn insert_pending(&self, orders: &[Order]) -> PortResult<()> {
        self.check()?;
        self.inner.insert_pending(orders).await
    }
    async fn create_orders(&self, batch: &[CreateRequest], now_ms: u64) -> PortResult<Vec<CreateOutcome>> {
        self.inner.create_orders(batch, now_ms).await
    }
    async fn order(&self, order_no: OrderNo) -> PortResult<Option<Order>> {
        self.inner.order(order_no).await
    }
    async fn orders_of(&self, buyer: Uid, before: Option<OrderNo>, limit: usize) -> PortResult<Vec<Order>> {
        self.inner.orders_of(buyer, before, limit).await
    }
    async fn audit_view(&self) -> PortResult<(Vec<Order>, Vec<(CommodityId, StockLevel)>)> {
        self.inner.audit_view().await
    }
    async fn transition(
        &self,
        order_no: OrderNo,
        action: OrderAction,
        now_ms: u64,
    ) -> PortResult<Result<Order, ChangeRejection>> {
        self.inner.transition(order_no, action, now_ms).await
    }
    async fn begin_payment(
        &self,
        order_no: OrderNo,
        attempt: PaymentAttempt,
    ) -> PortResult<Result<Order, ChangeRejection>> {
        self.inner.begin_payment(order_no, attempt).await
    }
    async fn finish_payment(
        &self,
        order_no: OrderNo,
        result: PaymentResult,
        now_ms: u64,
    ) -> PortResult<Result<Order, ChangeRejection>> {
        self.inner.finish_payment(order_no, result, now_ms).await
    }
    async fn payments_due(&self, now_ms: u64, limit: usize) -> PortResult<Vec<OrderNo>> {
        self.inner.payments_due(now_ms, limit).await
    }
    async fn postpone_payment_check(&self, order_no: OrderNo, at_ms: u64) -> PortResult<()> {
        self.inner.postpone_payment_check(order_no, at_ms).await
    }
    async fn payments_pending(&self) -> PortResult<usize> {
        self.inner.payments_pending().await
    }
    async fn outbox(&self, limit: usize) -> PortResult<Vec<(u64, OutboxEvent)>> {
        self.inner.outbox(limit).await
    }
    async fn outbox_done(&self, ids: &[u64]) -> PortResult<()> {
        self.inner.outbox_done(ids).await
    }
    async fn idempotency_begin(
        &self,
        buyer: Uid,
        key: &str,
        record: &IdempotencyRecord,
    ) -> PortResult<IdempotencyBegin> {
        self.inner.idempotency_begin(buyer, key, record).await
    }
    async fn idempotency_answer(&self, buyer: Uid, key: &str, answer: StoredAnswer) -> PortResult<()> {
        self.check()?;
        self.inner.idempotency_answer(buyer, key, answer).await
    }
    async fn meta(&self, key: &str) -> PortResult<Option<u64>> {
        self.inner.meta(key).await
    }
    async fn set_meta(&self, key: &str, value: u64) -> PortResult<()> {
        self.inner.set_meta(key, value).await
    }
    async fn lease(&self, name: &str, holder: u64, now_ms: u64, until_ms: u64) -> PortResult<bool> {
        self.inner.lease(name, holder, now_ms, until_ms).await
    }
}

/// A bus whose publish of creates lands but answers an error while `lying` is set (a confirm lost with
/// the broker's connection).
#[derive(Debug)]
struct LandsButFails {
    inner: Arc<dyn Bus>,
    lying: AtomicBool,
}

#[async_trait]
impl Bus for LandsButFails {
    async fn publish(&self, messages: Vec<Outgoing>) -> PortResult<()> {
        self.inner.publish(messages).await?;
        if self.lying.load(Ordering::SeqCst) {
            return Err(PortError::unavailable("bus", "injected: confirm lost"));
        }
        Ok(())
    }
    async fn publish_guards(&self, messages: Vec<Outgoing>) -> PortResult<()> {
        self.inner.publish_guards(messages).await
    }
    async fn receive(&self, topic: Topic, max: usize) -> PortResult<Vec<Delivery>> {
        self.inner.receive(topic, max).await
    }
    async fn ack(&self, receipts: &[Vec<u8>]) -> PortResult<()> {
        self.inner.ack(receipts).await
    }
    async fn retry(&self, receipt: &[u8], at_ms: u64) -> PortResult<()> {
        self.inner.retry(receipt, at_ms).await
    }
    async fn dead_letter(&self, receipt: &[u8], reason: &str) -> PortResult<()> {
        self.inner.dead_letter(receipt, reason).await
    }
    async fn depth(&self) -> PortResult<BusDepth> {
        self.inner.depth().await
    }
}

/// Defect 1: the store fails right after the create is durable (no pending view, no idempotency answer).
/// The buyer hears 200 with the numbers, and the orders are created and paid — before the fix the answer
/// was an error for an order that then existed and was charged.
#[tokio::test]
async fn a_store_failure_after_the_publish_still_answers_success() {
    let Harness { mut orderly, clock, .. } = harness(10).await;
    let store = Arc::new(AfterPublishFails { inner: Arc::clone(&orderly.store), down: AtomicBool::new(true) });
    orderly.store = Arc::clone(&store) as Arc<dyn Store>;
    let answer = orderly.place_orders(&seed_body(), Some("k-1")).await;
    let order_nos = answer.expect("the creates were durable: success");
    assert_eq!(order_nos.len(), 2);
    store.down.store(false, Ordering::SeqCst);
    orderly.drain().await.expect("workers run");
    for order_no in &order_nos {
        assert_eq!(state(&orderly, *order_no).await, OrderState::Paid);
    }
    // A retry with the key is answered the same numbers and creates nothing more.
    assert_eq!(orderly.place_orders(&seed_body(), Some("k-1")).await.expect("retry"), order_nos);
    orderly.drain().await.expect("workers run");
    assert_eq!(orderly.payments.succeeded().await.expect("ledger").len(), 2);
    settle_and_audit(&orderly, &clock).await;
}

/// Defect 1, the publish side: the create landed but the publish answered an error. The buyer hears
/// 503 and nothing may come of it: the late create is refused its reservation and ends `rejected`,
/// every unit is back, nothing is charged.
#[tokio::test]
async fn a_publish_that_landed_behind_an_error_answer_creates_nothing() {
    let Harness { mut orderly, clock, .. } = harness(10).await;
    let bus = Arc::new(LandsButFails { inner: Arc::clone(&orderly.bus), lying: AtomicBool::new(true) });
    orderly.bus = Arc::clone(&bus) as Arc<dyn Bus>;
    let answer = orderly.place_orders(&seed_body(), None).await;
    assert!(matches!(answer, Err(PlaceError::Unavailable(_))), "{answer:?}");
    bus.lying.store(false, Ordering::SeqCst);
    assert_eq!(stock(&orderly, 1).await, (10, Some(10)), "nothing held after the error answer");
    orderly.drain().await.expect("workers run");
    let (orders, _) = orderly.store.audit_view().await.expect("view");
    assert_eq!(orders.len(), 2, "the creates did land");
    assert!(orders.iter().all(|o| o.state == OrderState::Rejected), "{orders:?}");
    assert_eq!(stock(&orderly, 1).await, (10, Some(10)));
    assert_eq!(stock(&orderly, 2).await, (10, Some(10)));
    assert!(orderly.payments.succeeded().await.expect("ledger").is_empty(), "nothing charged");
    // The buyer's retry (a new cart, no key) is accepted and created.
    let order_nos = orderly.place_orders(&seed_body(), None).await.expect("accepted");
    orderly.drain().await.expect("workers run");
    assert_eq!(state(&orderly, order_nos[0]).await, OrderState::Paid);
    settle_and_audit(&orderly, &clock).await;
}
