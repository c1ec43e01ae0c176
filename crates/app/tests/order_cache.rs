//! The order cache (the seed's order queries cached in Redis with a delayed double delete), here with an
//! in-memory copy: a buyer's query is served from the copy, every change deletes it (the worker's create,
//! a payment, a cancel, a timeout), and a stale copy put back by a query that read the store just before
//! a change is gone after the second delete. The system's pay-at-once charge neither reads nor fills the
//! copy, and a cache that does not answer holds a buyer's query no longer than the entry's call bound.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use common::*;
use orderly_app::model::Order;
use orderly_app::ports::PortResult;
use orderly_app::{Actor, Clock, FlowConfig, OrderCache, Orderly, SECOND_DELETE_WINDOW_MS};
use orderly_domain::{OrderNo, OrderState, Uid};

#[derive(Debug, Default)]
struct MemoryOrders {
    copies: Mutex<HashMap<OrderNo, Order>>,
    hits: AtomicUsize,
    reads: AtomicUsize,
    writes: AtomicUsize,
    /// The calls that deleted copies, each with its orders.
    deletes: Mutex<Vec<Vec<OrderNo>>>,
}

#[async_trait]
impl OrderCache for MemoryOrders {
    async fn get(&self, order_no: OrderNo) -> PortResult<Option<Order>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let copy = self.copies.lock().expect("lock").get(&order_no).cloned();
        if copy.is_some() {
            self.hits.fetch_add(1, Ordering::SeqCst);
        }
        Ok(copy)
    }
    async fn put(&self, order: &Order) -> PortResult<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.copies.lock().expect("lock").insert(order.order_no, order.clone());
        Ok(())
    }
    async fn forget(&self, order_nos: &[OrderNo]) -> PortResult<()> {
        self.deletes.lock().expect("lock").push(order_nos.to_vec());
        let mut copies = self.copies.lock().expect("lock");
        for order_no in order_nos {
            copies.remove(order_no);
        }
        Ok(())
    }
}

async fn with_order_cache(stock: u32) -> (Harness, Arc<MemoryOrders>) {
    let mut h = harness(stock).await;
    let copies = Arc::new(MemoryOrders::default());
    h.ports.orders = Some(Arc::clone(&copies) as Arc<dyn OrderCache>);
    let flow = FlowConfig { order_cache_second_delete_ms: 50, ..FlowConfig::default() };
    h.orderly = Orderly::new(h.ports.clone(), flow);
    (h, copies)
}

async fn seen(h: &Harness, order_no: OrderNo) -> OrderState {
    h.orderly.order(Actor::Buyer(Uid(1)), order_no).await.expect("the buyer's order").state
}

#[tokio::test]
async fn queries_are_served_from_the_copy_until_a_change_deletes_it() {
    let (h, copies) = with_order_cache(10).await;
    let order_no = h.orderly.place_orders(&body(1, false, &[(1, 1)]), None).await.expect("accepted")[0];
    assert_eq!(seen(&h, order_no).await, OrderState::Pending);
    assert_eq!(seen(&h, order_no).await, OrderState::Pending);
    assert_eq!(copies.hits.load(Ordering::SeqCst), 1, "the second query came from the copy");

    // The worker's create deletes it; so does the buyer's payment.
    h.orderly.drain().await.expect("drain");
    assert_eq!(seen(&h, order_no).await, OrderState::ToPay);
    h.orderly.pay(Actor::Buyer(Uid(1)), order_no).await.expect("paid");
    assert_eq!(seen(&h, order_no).await, OrderState::Paid);
}

#[tokio::test]
async fn a_stale_copy_put_back_after_a_change_is_gone_after_the_second_delete() {
    let (h, copies) = with_order_cache(10).await;
    let order_no = h.orderly.place_orders(&body(1, false, &[(1, 1)]), None).await.expect("accepted")[0];
    h.orderly.drain().await.expect("drain");
    let before = order(&h.ports, order_no).await;
    assert_eq!(before.state, OrderState::ToPay);

    h.orderly.cancel(Actor::Buyer(Uid(1)), order_no).await.expect("cancelled");
    // A query that read the store just before the cancel puts its copy back after the first delete.
    copies.put(&before).await.expect("put");
    assert_eq!(seen(&h, order_no).await, OrderState::ToPay, "the window the second delete closes");
    // The create's change opened a window of second deletes and the cancel joined it; the delay starts
    // when the window closes.
    h.clock.advance_ms(SECOND_DELETE_WINDOW_MS);
    settle().await;
    h.clock.advance_ms(49);
    settle().await;
    assert_eq!(seen(&h, order_no).await, OrderState::ToPay, "not before the second delete's time");
    h.clock.advance_ms(1);
    sleeps_ended(&h.clock).await;
    assert_eq!(seen(&h, order_no).await, OrderState::Cancelled);
}

#[tokio::test]
async fn a_timeout_closing_an_order_deletes_its_copy() {
    let (h, _copies) = with_order_cache(10).await;
    let order_no = h.orderly.place_orders(&body(1, false, &[(1, 1)]), None).await.expect("accepted")[0];
    h.orderly.drain().await.expect("drain");
    assert_eq!(seen(&h, order_no).await, OrderState::ToPay);
    h.clock.advance_ms(orderly_app::FlowConfig::default().unpaid_timeout_ms + 1);
    h.orderly.drain().await.expect("drain");
    assert_eq!(seen(&h, order_no).await, OrderState::Closed);
}

/// The worker's pay-at-once charge acts on the store's order: it neither reads nor fills the copy (a
/// cache failing over would hold its message where no queue counts it). It still deletes the copy.
#[tokio::test]
async fn the_systems_charge_neither_reads_nor_fills_the_copy() {
    let (h, copies) = with_order_cache(10).await;
    let order_no = h.orderly.place_orders(&body(1, true, &[(1, 1)]), None).await.expect("accepted")[0];
    h.orderly.drain().await.expect("drain");
    assert_eq!(order(&h.ports, order_no).await.state, OrderState::Paid, "charged at once");
    assert_eq!(copies.reads.load(Ordering::SeqCst), 0, "no copy read");
    assert_eq!(copies.writes.load(Ordering::SeqCst), 0, "no copy written");
    assert_eq!(seen(&h, order_no).await, OrderState::Paid);
    assert_eq!(copies.reads.load(Ordering::SeqCst), 1, "the buyer's query reads it");
}

/// A cache that never answers (a Redis Cluster shard failing over retries for seconds).
#[derive(Debug, Default)]
struct SilentOrders;

#[async_trait]
impl OrderCache for SilentOrders {
    async fn get(&self, _: OrderNo) -> PortResult<Option<Order>> {
        std::future::pending().await
    }
    async fn put(&self, _: &Order) -> PortResult<()> {
        std::future::pending().await
    }
    async fn forget(&self, _: &[OrderNo]) -> PortResult<()> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_cache_that_does_not_answer_holds_a_query_no_longer_than_the_call_bound() {
    let mut h = harness(10).await;
    let order_no = h.orderly.place_orders(&body(1, false, &[(1, 1)]), None).await.expect("accepted")[0];
    h.orderly.drain().await.expect("drain");
    h.ports.orders = Some(Arc::new(SilentOrders) as Arc<dyn OrderCache>);
    h.orderly = Orderly::new(h.ports.clone(), FlowConfig::default());
    let bound_ms = FlowConfig::default().entry_call_timeout_ms;
    let orderly = h.orderly.clone();
    let query = tokio::spawn(async move { orderly.order(Actor::Buyer(Uid(1)), order_no).await });
    // The read waits out the bound, then the store answers; no copy is put back into a cache that just
    // failed. The clock moves only while the query waits on it.
    let start_ms = h.clock.now_ms();
    let mut turns = 0;
    while !query.is_finished() {
        turns += 1;
        assert!(turns < 1_000_000, "the query still waits on the cache");
        if h.clock.sleepers() > 0 {
            h.clock.advance_ms(bound_ms);
            for _ in 0..10_000 {
                if h.clock.sleepers() == 0 || query.is_finished() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(h.clock.now_ms() - start_ms, bound_ms, "one bound: the read's");
    let order = query.await.expect("the query ends").expect("the store answers");
    assert_eq!(order.state, OrderState::ToPay);
}

/// The second deletes of changes made within one window go as one call: after the window closes and the
/// delay has passed, never before the delay after each change; a change after the window opens the next.
#[tokio::test]
async fn second_deletes_within_a_window_go_together() {
    let (h, copies, first, second) = two_orders_created().await;

    h.orderly.cancel(Actor::Buyer(Uid(1)), first).await.expect("cancelled");
    h.clock.advance_ms(SECOND_DELETE_WINDOW_MS - 1);
    settle().await;
    h.orderly.cancel(Actor::Buyer(Uid(1)), second).await.expect("cancelled");
    let firsts = vec![vec![first], vec![second]];
    assert_eq!(*copies.deletes.lock().expect("lock"), firsts, "each change deletes its copy at once");
    // The window closes 1 ms after the second change; 49 ms after that, neither second delete yet.
    h.clock.advance_ms(1);
    settle().await;
    h.clock.advance_ms(49);
    settle().await;
    assert_eq!(copies.deletes.lock().expect("lock").len(), 2, "not before the delay after the window");
    h.clock.advance_ms(1);
    sleeps_ended(&h.clock).await;
    let mut together = vec![first, second];
    together.sort_unstable();
    assert_eq!(copies.deletes.lock().expect("lock")[2..], [together], "one call for the window");
}

/// A change made after a window's time is up but before its task closed it (scheduled late) joins it,
/// and still gets the whole delay: the delay starts when the window is closed. (Whether the task ran
/// during the second change's own awaits decides if it joined or opened the next window; either way
/// its second delete is not early.)
#[tokio::test]
async fn a_change_joining_a_window_closed_late_gets_the_whole_delay() {
    let (h, copies, first, second) = two_orders_created().await;

    h.orderly.cancel(Actor::Buyer(Uid(1)), first).await.expect("cancelled");
    // Past the window's end before its task has run.
    h.clock.advance_ms(SECOND_DELETE_WINDOW_MS + 30);
    h.orderly.cancel(Actor::Buyer(Uid(1)), second).await.expect("cancelled");
    settle().await;
    h.clock.advance_ms(49);
    settle().await;
    assert_eq!(copies.deletes.lock().expect("lock").len(), 2, "the second change's delay is not cut short");
    second_deletes_done(&h).await;
    let again: Vec<OrderNo> = copies.deletes.lock().expect("lock")[2..].concat();
    assert!(again.contains(&first) && again.contains(&second), "both deleted again: {again:?}");
}

/// Two orders of buyer 1 created, their changes' second deletes done, and the deletes seen so far forgotten.
async fn two_orders_created() -> (Harness, Arc<MemoryOrders>, OrderNo, OrderNo) {
    let (h, copies) = with_order_cache(10).await;
    let first = h.orderly.place_orders(&body(1, false, &[(1, 1)]), None).await.expect("accepted")[0];
    let second = h.orderly.place_orders(&body(1, false, &[(1, 1)]), None).await.expect("accepted")[0];
    h.orderly.drain().await.expect("drain");
    second_deletes_done(&h).await;
    copies.deletes.lock().expect("lock").clear();
    (h, copies, first, second)
}

/// Lets the spawned tasks run (none of them waits on anything but the clock here).
async fn settle() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

/// Moves the clock past the second deletes of the windows open now (a window, then the tests' 50 ms
/// delay from its closing) and waits for them.
async fn second_deletes_done(h: &Harness) {
    h.clock.advance_ms(SECOND_DELETE_WINDOW_MS);
    settle().await;
    h.clock.advance_ms(50);
    sleeps_ended(&h.clock).await;
}
