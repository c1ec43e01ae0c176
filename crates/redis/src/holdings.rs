//! [`RedisHoldings`]: the gate of the buyer's caps ([`orderly_app::caps`]) as one Lua script
//! (`lua/admit.lua`) on one key per buyer, `<ns>:{b:<buyer>}:admitted` (a hash of the orders admitted
//! lately, expiring with the last of them); on a Redis Cluster each buyer's gate lives on its tag's shard.
//! A Redis that loses the key forgets the orders admitted within the last minute that the store read does
//! not show yet: carts in flight at that moment may pass a cap together.

use async_trait::async_trait;
use orderly_app::caps::{Admission, Admit, Holding};
use orderly_app::ports::{Holdings, PortResult};
use orderly_domain::{CommodityId, OrderNo, Uid};
use redis::Script;

use crate::stock_cache::encode_lines;
use crate::{RedisConnection, port_error};

pub struct RedisHoldings {
    connection: RedisConnection,
    namespace: String,
    script: Script,
}

impl std::fmt::Debug for RedisHoldings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHoldings").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

impl RedisHoldings {
    /// On a connection shared with the other adapters.
    pub fn with_connection(connection: RedisConnection, namespace: String) -> RedisHoldings {
        RedisHoldings { connection, namespace, script: Script::new(include_str!("../lua/admit.lua")) }
    }

    fn key(&self, buyer: Uid) -> String {
        format!("{}:{{b:{}}}:admitted", self.namespace, buyer.0)
    }
}

#[async_trait]
impl Holdings for RedisHoldings {
    async fn admit(&self, buyer: Uid, admission: &Admission) -> PortResult<Admit> {
        let mut invocation = self.script.key(self.key(buyer));
        invocation
            .arg(admission.now_ms)
            .arg(admission.recent_ms)
            .arg(admission.units_per_commodity)
            .arg(admission.unpaid_orders)
            .arg(admission.known.len());
        for order in &admission.known {
            let holding = match order.holding {
                Holding::Unpaid => "u",
                Holding::Paid => "p",
                Holding::Free => "f",
            };
            invocation.arg(order.order_no.to_string()).arg(holding).arg(encode_lines(&order.lines));
        }
        for order in &admission.new {
            invocation.arg(order.order_no.to_string()).arg(encode_lines(&order.lines));
        }
        let answer: Vec<String> = invocation.invoke_async(&mut self.connection.clone()).await.map_err(port_error)?;
        let number = |text: Option<&String>| -> PortResult<u64> {
            text.and_then(|t| t.parse().ok()).ok_or_else(|| crate::bad_answer(format!("admit answered {answer:?}")))
        };
        match answer.first().map(String::as_str) {
            Some("admitted") => Ok(Admit::Admitted),
            Some("purchase_cap") => Ok(Admit::PurchaseCap {
                commodity_id: CommodityId(number(answer.get(1))?),
                held: number(answer.get(2))?,
                cap: admission.units_per_commodity,
            }),
            Some("unpaid_cap") => Ok(Admit::UnpaidCap { held: number(answer.get(1))?, cap: admission.unpaid_orders }),
            _ => Err(crate::bad_answer(format!("admit answered {answer:?}"))),
        }
    }

    async fn withdraw(&self, buyer: Uid, order_nos: &[OrderNo]) -> PortResult<()> {
        if order_nos.is_empty() {
            return Ok(());
        }
        let fields: Vec<String> = order_nos.iter().map(OrderNo::to_string).collect();
        redis::cmd("HDEL")
            .arg(self.key(buyer))
            .arg(fields)
            .query_async::<()>(&mut self.connection.clone())
            .await
            .map_err(port_error)
    }
}
