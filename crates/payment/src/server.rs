//! The gRPC service: validates each request, hands it to the ledger behind the `Payments` port, and
//! maps the answer. A ledger failure becomes `UNAVAILABLE` (retry; outcome unknown) or `INTERNAL`.

use std::future::Future;
use std::sync::Arc;

use orderly_app::PortError;
use orderly_app::ports::{ChargeOutcome, ChargeRequest, PaymentStatus, Payments, RefundOutcome, RefundRefusal};
use orderly_domain::{MONEY_CENTS_MAX, Money, OrderNo};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::proto;
use crate::proto::payment_server::{Payment, PaymentServer};

/// Longest idempotency or refund key accepted.
pub const KEY_LEN_MAX: usize = 200;

/// Charges a `ListSucceeded` page carries at most (about 50 bytes each: far below gRPC's 4 MiB).
pub const SUCCEEDED_PAGE: usize = 10_000;

#[derive(Debug, Clone)]
pub struct PaymentService {
    ledger: Arc<dyn Payments>,
    succeeded_page: usize,
}

impl PaymentService {
    pub fn new(ledger: Arc<dyn Payments>) -> PaymentService {
        PaymentService { ledger, succeeded_page: SUCCEEDED_PAGE }
    }

    /// Smaller `ListSucceeded` pages (tests).
    pub fn with_succeeded_page(self, succeeded_page: usize) -> PaymentService {
        PaymentService { succeeded_page: succeeded_page.max(1), ..self }
    }

    pub fn into_server(self) -> PaymentServer<PaymentService> {
        PaymentServer::new(self)
    }
}

/// Serves the service on `listener` until `shutdown` completes; in-flight calls finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ledger: Arc<dyn Payments>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(PaymentService::new(ledger).into_server())
        // No Nagle: a small reply must not wait for the caller's delayed ACK (a 40 ms tail measured).
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}

fn status_of(error: PortError) -> Status {
    if error.is_retryable() {
        Status::unavailable(error.to_string())
    } else {
        tracing::error!(%error, "payment ledger failure");
        Status::internal("ledger failure")
    }
}

fn order_no(text: &str) -> Result<OrderNo, Status> {
    text.parse().map_err(|_| Status::invalid_argument("order_no must be an order number"))
}

fn amount(cents: i64) -> Result<Money, Status> {
    if cents <= 0 || cents > MONEY_CENTS_MAX {
        return Err(Status::invalid_argument(format!("amount_cents must be in 1..={MONEY_CENTS_MAX}")));
    }
    Ok(Money::from_cents(cents))
}

fn key(text: &str, what: &str) -> Result<(), Status> {
    if text.is_empty() || text.len() > KEY_LEN_MAX {
        return Err(Status::invalid_argument(format!("{what} must be 1 to {KEY_LEN_MAX} bytes")));
    }
    Ok(())
}

/// Charges the service answered, by `outcome`: `succeeded`, `declined`, `error` (no answer given).
pub const CHARGES: &str = "orderly_payment_service_charges_total";
/// How long the service took over a charge, in seconds (the acquirer's call included).
pub const CHARGE_SECONDS: &str = "orderly_payment_service_charge_seconds";

/// Gives the service's series their help text (once, when the process installs its recorder).
pub fn describe_metrics() {
    metrics::describe_counter!(CHARGES, "Charges the payment service answered, by outcome");
    metrics::describe_histogram!(
        CHARGE_SECONDS,
        metrics::Unit::Seconds,
        "How long the payment service took over a charge"
    );
}

impl PaymentService {
    /// `charge` inside the order's span.
    async fn charge_traced(
        &self,
        request: proto::ChargeRequest,
        trace: Option<String>,
    ) -> Result<Response<proto::ChargeReply>, Status> {
        if request.currency != crate::CURRENCY {
            return Err(Status::invalid_argument(format!("currency must be {}", crate::CURRENCY)));
        }
        key(&request.idempotency_key, "idempotency_key")?;
        let charge = ChargeRequest {
            order_no: order_no(&request.order_no)?,
            amount: amount(request.amount_cents)?,
            idempotency_key: request.idempotency_key,
            deadline_ms: request.deadline_ms,
            trace,
        };
        // A started charge runs to its end even if the caller goes away (its deadline, a dropped
        // connection): cut off, it would stay PROCESSING until its lease ran out and then be voided — a
        // needless decline. Its retry or the reconciler's question then finds the answer.
        let ledger = Arc::clone(&self.ledger);
        let started = std::time::Instant::now();
        let charged = tokio::spawn(async move { ledger.charge(charge).await })
            .await
            .map_err(|_| Status::internal("the charge task failed"))?;
        let counted = match &charged {
            Ok(ChargeOutcome::Succeeded { .. }) => "succeeded",
            Ok(ChargeOutcome::Declined { .. }) => "declined",
            Err(_) => "error",
        };
        metrics::counter!(CHARGES, "outcome" => counted).increment(1);
        metrics::histogram!(CHARGE_SECONDS).record(started.elapsed().as_secs_f64());
        tracing::debug!(target: orderly_app::trace::TARGET, outcome = counted, "charge answered");
        let outcome = match charged.map_err(status_of)? {
            ChargeOutcome::Succeeded { payment_id } => {
                proto::charge_reply::Outcome::Succeeded(proto::Succeeded { payment_id })
            }
            ChargeOutcome::Declined { reason } => proto::charge_reply::Outcome::Declined(proto::Declined { reason }),
        };
        Ok(Response::new(proto::ChargeReply { outcome: Some(outcome) }))
    }
}

#[tonic::async_trait]
impl Payment for PaymentService {
    async fn charge(&self, request: Request<proto::ChargeRequest>) -> Result<Response<proto::ChargeReply>, Status> {
        // The caller's trace context: the charge logs under the order's trace id.
        let trace = request.metadata().get(crate::TRACEPARENT).and_then(|value| value.to_str().ok()).map(str::to_owned);
        let request = request.into_inner();
        let span = match order_no(&request.order_no) {
            Ok(number) => orderly_app::trace::order_span(number, trace.as_deref()),
            Err(_) => tracing::Span::none(),
        };
        self.charge_traced(request, trace).instrument(span).await
    }

    async fn query(&self, request: Request<proto::QueryRequest>) -> Result<Response<proto::QueryReply>, Status> {
        let order_no = order_no(&request.into_inner().order_no)?;
        use proto::query_reply::Status as S;
        let status = match self.ledger.query(order_no).await.map_err(status_of)? {
            PaymentStatus::Succeeded { payment_id } => S::Succeeded(proto::Succeeded { payment_id }),
            PaymentStatus::Declined { reason } => S::Declined(proto::Declined { reason }),
            PaymentStatus::Processing => S::Processing(proto::Processing {}),
            PaymentStatus::NotFound => S::NotFound(proto::NotFound {}),
        };
        Ok(Response::new(proto::QueryReply { status: Some(status) }))
    }

    async fn refund(&self, request: Request<proto::RefundRequest>) -> Result<Response<proto::RefundReply>, Status> {
        let request = request.into_inner();
        key(&request.refund_key, "refund_key")?;
        let order_no = order_no(&request.order_no)?;
        let amount = amount(request.amount_cents)?;
        match self.ledger.refund(order_no, amount, &request.refund_key).await.map_err(status_of)? {
            RefundOutcome::Refunded { total } => {
                Ok(Response::new(proto::RefundReply { refunded_cents: total.cents() }))
            }
            RefundOutcome::Refused { reason: RefundRefusal::NotCharged } => {
                Err(Status::failed_precondition("the order has no successful charge"))
            }
            RefundOutcome::Refused { reason: RefundRefusal::AmountOutOfRange } => {
                Err(Status::out_of_range("more than what is left to refund"))
            }
        }
    }

    async fn list_succeeded(
        &self,
        request: Request<proto::ListSucceededRequest>,
    ) -> Result<Response<proto::ListSucceededReply>, Status> {
        let after = request.into_inner().after;
        let after: Option<OrderNo> = match after.as_str() {
            "" => None,
            text => Some(text.parse().map_err(|_| Status::invalid_argument(format!("order number {text:?}")))?),
        };
        let mut charges = self.ledger.succeeded().await.map_err(status_of)?;
        charges.retain(|(order_no, _)| after.is_none_or(|after| *order_no > after));
        charges.sort_unstable_by_key(|(order_no, _)| *order_no);
        let more = charges.len() > self.succeeded_page;
        let charges = charges
            .into_iter()
            .take(self.succeeded_page)
            .map(|(order_no, payment_id)| proto::Charge { order_no: order_no.to_string(), payment_id })
            .collect();
        Ok(Response::new(proto::ListSucceededReply { charges, more }))
    }
}
