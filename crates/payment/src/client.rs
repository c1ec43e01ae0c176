//! [`GrpcPayments`]: the `Payments` port over gRPC.
//!
//! Every call carries a deadline. Every call is idempotent (a charge per idempotency key, a refund per
//! refund key, queries trivially), so an `UNAVAILABLE` or a transport failure is retried with
//! exponential backoff and full jitter, a bounded number of times. A charge that still has no answer
//! is reported as a retryable error — *unknown outcome* — and the flow leaves it to the reconciler.
//! Instances are balanced client-side (tower's power-of-two-choices over a static list, or over the
//! instances a registry lists, followed: [`GrpcPayments::discovered`]); they must
//! share one ledger (the cluster profile's database), or idempotency would not span them.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use orderly_app::PortError;
use orderly_app::ports::{
    ChargeOutcome, ChargeRequest, PaymentStatus, Payments, PortResult, RefundOutcome, RefundRefusal,
};
use orderly_app::registry::{Member, Role};
use orderly_domain::{Money, OrderNo};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tonic::metadata::MetadataValue;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::TRACEPARENT;
use crate::proto;
use crate::proto::payment_client::PaymentClient;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Payment service instances (`http://host:port`). Empty: the payment service runs in process.
    pub endpoints: Vec<String>,
    /// Deadline of one call.
    pub call_timeout_ms: u64,
    /// Calls per request, first included.
    pub attempts_max: u32,
    /// First backoff; doubles per retry, with full jitter.
    pub backoff_ms: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig { endpoints: Vec::new(), call_timeout_ms: 1_000, attempts_max: 3, backoff_ms: 20 }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcPayments {
    client: PaymentClient<Channel>,
    config: ClientConfig,
}

/// What can go wrong calling the payment service. A call that went out and got no readable answer is
/// an *unknown outcome* (the charge may have happened): retryable, never a failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no payment service endpoint configured")]
    NoEndpoint,
    #[error("endpoint {uri}: {source}")]
    BadEndpoint { uri: String, source: tonic::transport::Error },
    /// The call failed (unreachable, overloaded, too slow, or refused after it may have run).
    #[error("{code:?}: {message}")]
    Call { code: Code, message: String },
    /// A reply without the answer it must carry: no answer, like no reply.
    #[error("{0} reply without an answer")]
    EmptyReply(&'static str),
    /// A reply naming something that cannot be read (an order number).
    #[error("bad reply: {0}")]
    BadReply(String),
}

impl ClientError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, ClientError::Call { .. } | ClientError::EmptyReply(_))
    }
}

impl From<ClientError> for PortError {
    fn from(error: ClientError) -> PortError {
        match error {
            error if error.is_retryable() => PortError::unavailable("payment service", error),
            error @ ClientError::BadReply(_) => PortError::corrupt("payment service", error),
            error => PortError::failed("payment client", error),
        }
    }
}

fn unavailable(status: &Status) -> PortError {
    ClientError::Call { code: status.code(), message: status.message().to_owned() }.into()
}

/// Whether another call may help: the service was unreachable, overloaded, or too slow.
fn retryable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::ResourceExhausted)
}

impl GrpcPayments {
    /// Connects lazily (the first call connects): a payment service that is down at start is only a
    /// failed call, settled later like any other. Must run inside a tokio runtime.
    pub fn new(config: ClientConfig) -> Result<GrpcPayments, PortError> {
        if config.endpoints.is_empty() {
            return Err(ClientError::NoEndpoint.into());
        }
        let timeout = Duration::from_millis(config.call_timeout_ms.max(1));
        let endpoints = config
            .endpoints
            .iter()
            .map(|uri| {
                Endpoint::from_shared(uri.clone())
                    .map(|endpoint| endpoint.connect_timeout(timeout).timeout(timeout).tcp_nodelay(true))
                    .map_err(|source| ClientError::BadEndpoint { uri: uri.clone(), source }.into())
            })
            .collect::<Result<Vec<Endpoint>, PortError>>()?;
        let channel = match endpoints.as_slice() {
            [one] => one.connect_lazy(),
            _ => Channel::balance_list(endpoints.into_iter()),
        };
        Ok(GrpcPayments { client: PaymentClient::new(channel), config })
    }

    /// Balances over the payment instances a registry lists, following it: an instance that registers
    /// takes calls as soon as it is seen; one that leaves (deregistered, or its lease expired) gets no new
    /// call. `config.endpoints` is not used. While no instance is known, calls fail as unavailable (and are
    /// settled later like any other failed call: each attempt waits at most the call timeout). Must run
    /// inside a tokio runtime.
    pub fn discovered(config: ClientConfig, mut members: watch::Receiver<Vec<Member>>) -> GrpcPayments {
        let timeout = Duration::from_millis(config.call_timeout_ms.max(1));
        let (channel, changes) = Channel::balance_channel::<String>(64);
        tokio::spawn(async move {
            let mut known: BTreeMap<String, String> = BTreeMap::new();
            loop {
                let now: BTreeMap<String, String> = members
                    .borrow_and_update()
                    .iter()
                    .filter(|m| m.role == Role::Payment && !m.address.is_empty())
                    .map(|m| (m.instance.clone(), m.address.clone()))
                    .collect();
                for (instance, address) in &known {
                    if now.get(instance) != Some(address) {
                        tracing::info!(%instance, %address, "payment instance left the balancer");
                        if changes.send(Change::Remove(instance.clone())).await.is_err() {
                            return;
                        }
                    }
                }
                for (instance, address) in &now {
                    if known.get(instance) == Some(address) {
                        continue;
                    }
                    let endpoint = match Endpoint::from_shared(address.clone()) {
                        Ok(endpoint) => endpoint.connect_timeout(timeout).timeout(timeout).tcp_nodelay(true),
                        Err(error) => {
                            tracing::warn!(%instance, %address, %error, "payment instance with a bad address; left out");
                            continue;
                        }
                    };
                    tracing::info!(%instance, %address, "payment instance joined the balancer");
                    if changes.send(Change::Insert(instance.clone(), endpoint)).await.is_err() {
                        return;
                    }
                }
                known = now;
                if members.changed().await.is_err() {
                    return;
                }
            }
        });
        GrpcPayments { client: PaymentClient::new(channel), config }
    }

    /// Calls `call` until it answers, fails for good, or the attempts run out.
    async fn with_retries<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(PaymentClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let attempts_max = self.config.attempts_max.max(1);
        let mut attempt = 1;
        // Bounded here too: over a registry, a call made while no instance is known waits in the
        // balancer, where no endpoint's own timeout applies.
        let limit = Duration::from_millis(self.config.call_timeout_ms.max(1));
        loop {
            let answer = tokio::time::timeout(limit, call(self.client.clone()))
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded(format!("no answer within {limit:?}"))));
            match answer {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if retryable(&status) && attempt < attempts_max => {
                    let ceiling_ms = self.config.backoff_ms.saturating_mul(1 << (attempt - 1).min(16));
                    let pause_ms = SmallRng::from_os_rng().random_range(0..=ceiling_ms);
                    tracing::debug!(attempt, code = ?status.code(), pause_ms, "payment call failed; retrying");
                    tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                    attempt += 1;
                }
                Err(status) => return Err(status),
            }
        }
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(Duration::from_millis(self.config.call_timeout_ms.max(1)));
        request
    }
}

#[async_trait]
impl Payments for GrpcPayments {
    async fn charge(&self, request: ChargeRequest) -> PortResult<ChargeOutcome> {
        let message = proto::ChargeRequest {
            order_no: request.order_no.to_string(),
            amount_cents: request.amount.cents(),
            currency: crate::CURRENCY.to_owned(),
            idempotency_key: request.idempotency_key,
            deadline_ms: request.deadline_ms,
        };
        // The order's trace context, for the service's log (`orderly_app::trace`).
        let traceparent = request.trace.as_deref().and_then(|trace| MetadataValue::try_from(trace).ok());
        let reply = self
            .with_retries(|mut client| {
                let mut message = self.request(message.clone());
                if let Some(traceparent) = &traceparent {
                    message.metadata_mut().insert(TRACEPARENT, traceparent.clone());
                }
                async move { client.charge(message).await }
            })
            .await
            .map_err(|status| unavailable(&status))?;
        match reply.outcome {
            Some(proto::charge_reply::Outcome::Succeeded(s)) => {
                Ok(ChargeOutcome::Succeeded { payment_id: s.payment_id })
            }
            Some(proto::charge_reply::Outcome::Declined(d)) => Ok(ChargeOutcome::Declined { reason: d.reason }),
            // A reply without an outcome is not an answer: unknown, like no reply.
            None => Err(ClientError::EmptyReply("charge").into()),
        }
    }

    async fn query(&self, order_no: OrderNo) -> PortResult<PaymentStatus> {
        let message = proto::QueryRequest { order_no: order_no.to_string() };
        let reply = self
            .with_retries(|mut client| {
                let message = self.request(message.clone());
                async move { client.query(message).await }
            })
            .await
            .map_err(|status| unavailable(&status))?;
        use proto::query_reply::Status as S;
        match reply.status {
            Some(S::Succeeded(s)) => Ok(PaymentStatus::Succeeded { payment_id: s.payment_id }),
            Some(S::Declined(d)) => Ok(PaymentStatus::Declined { reason: d.reason }),
            Some(S::Processing(_)) => Ok(PaymentStatus::Processing),
            Some(S::NotFound(_)) => Ok(PaymentStatus::NotFound),
            None => Err(ClientError::EmptyReply("query").into()),
        }
    }

    async fn refund(&self, order_no: OrderNo, amount: Money, refund_key: &str) -> PortResult<RefundOutcome> {
        let message = proto::RefundRequest {
            order_no: order_no.to_string(),
            amount_cents: amount.cents(),
            refund_key: refund_key.to_owned(),
        };
        let answer = self
            .with_retries(|mut client| {
                let message = self.request(message.clone());
                async move { client.refund(message).await }
            })
            .await;
        match answer {
            Ok(reply) => Ok(RefundOutcome::Refunded { total: Money::from_cents(reply.refunded_cents) }),
            Err(status) if status.code() == Code::FailedPrecondition => {
                Ok(RefundOutcome::Refused { reason: RefundRefusal::NotCharged })
            }
            Err(status) if status.code() == Code::OutOfRange => {
                Ok(RefundOutcome::Refused { reason: RefundRefusal::AmountOutOfRange })
            }
            Err(status) => Err(unavailable(&status)),
        }
    }

    /// Page after page (the service answers a bounded page, by order number).
    async fn succeeded(&self) -> PortResult<Vec<(OrderNo, String)>> {
        let mut succeeded: Vec<(OrderNo, String)> = Vec::new();
        loop {
            let after = succeeded.last().map_or_else(String::new, |(order_no, _)| order_no.to_string());
            let reply = self
                .with_retries(|mut client| {
                    let message = self.request(proto::ListSucceededRequest { after: after.clone() });
                    async move { client.list_succeeded(message).await }
                })
                .await
                .map_err(|status| unavailable(&status))?;
            if reply.more && reply.charges.is_empty() {
                return Err(ClientError::BadReply("an empty page with more to come".into()).into());
            }
            for charge in reply.charges {
                let order_no = charge
                    .order_no
                    .parse()
                    .map_err(|_| ClientError::BadReply(format!("order number {}", charge.order_no)))?;
                succeeded.push((order_no, charge.payment_id));
            }
            if !reply.more {
                return Ok(succeeded);
            }
        }
    }
}
