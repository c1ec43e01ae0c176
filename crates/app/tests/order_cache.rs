//! The order cache (the seed's order queries cached in Redis with a delayed double delete), here with an
//! in-memory copy: a buyer's query is served from the copy, every change deletes it (the worker's create,
//! a payment, a cancel, a timeout), and a stale copy put back by a query that read the store just before
//! a change is gone after the second delete.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use common::*;
use orderly_app::model::Order;
use orderly_app::ports::PortResult;
use orderly_app::{Actor, FlowConfig, OrderCache, Orderly};
use orderly_domain::{OrderNo, OrderState, Uid};

#[derive(Debug, Default)]
struct MemoryOrders {
    copies: Mutex<HashMap<OrderNo, Order>>,
    hits: AtomicUsize,
}

#[async_trait]
impl OrderCache for MemoryOrders {
    async fn get(&self, order_no: OrderNo) -> PortResult<Option<Order>> {
        let copy = self.copies.lock().expect("lock").get(&order_no).cloned();
        if copy.is_some() {
            self.hits.fetch_add(1, Ordering::SeqCst);
        }
        Ok(copy)
    }
    async fn put(&self, order: &Order) -> PortResult<()> {
        self.copies.lock().expect("lock").insert(order.order_no, order.clone());
        Ok(())
    }
    async fn forget(&self, order_nos: &[OrderNo]) -> PortResult<()> {
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
    h.clock.advance_ms(49);
    tokio::task::yield_now().await;
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
