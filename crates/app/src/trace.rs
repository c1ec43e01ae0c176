//! Following one order across processes. The request that places a cart has a trace context (W3C
//! `traceparent`: the client's, or a new one when the process traces orders — `orderly::trace` at debug
//! or OTLP export on); each of its orders keeps it (`Order::trace`), so it
//! travels in the create message with the order, is stored with it, and every later step — the worker's
//! create, the charge (as gRPC metadata to the payment service), the reconciler's settling, the unpaid
//! close — logs under a span carrying the order's `trace_id`. Those spans and events go to the target
//! [`TARGET`] at debug level: `ORDERLY_LOG=info,orderly::trace=debug` prints one order's path in every
//! process, `grep <trace id>` follows it; with OTLP export on, the spans are exported whatever the log
//! filter says (`orderly::init_logging`).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use orderly_domain::OrderNo;

/// The log target of the order path's events.
pub const TARGET: &str = "orderly::trace";

/// A W3C trace context (`traceparent`, version 00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    /// The caller's span.
    pub parent_id: u64,
    pub sampled: bool,
}

impl TraceParent {
    /// `00-<32 hex>-<16 hex>-<2 hex>` (lower-case hex, ids not all zero), or `None`: per the W3C
    /// recommendation a malformed header starts a new trace rather than refusing the request.
    pub fn parse(text: &str) -> Option<TraceParent> {
        let mut parts = text.trim().split('-');
        let (version, trace_id, parent_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |part: &str, len: usize| {
            part.len() == len && part.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        // Version 00 has exactly four parts; a later version may add some (read as 00).
        if !hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        if !hex(trace_id, 32) || !hex(parent_id, 16) || !hex(flags, 2) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace_id, 16).ok().filter(|id| *id != 0)?;
        let parent_id = u64::from_str_radix(parent_id, 16).ok().filter(|id| *id != 0)?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(TraceParent { trace_id, parent_id, sampled: flags & 1 == 1 })
    }

    /// As OpenTelemetry's remote parent.
    pub fn otel_context(&self) -> opentelemetry::Context {
        use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
        let flags = if self.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        let remote = SpanContext::new(
            TraceId::from_bytes(self.trace_id.to_be_bytes()),
            SpanId::from_bytes(self.parent_id.to_be_bytes()),
            flags,
            true,
            TraceState::default(),
        );
        opentelemetry::Context::new().with_remote_span_context(remote)
    }

    /// The trace id as W3C writes it (32 lower-case hex digits).
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{:032x}-{:016x}-{:02x}", self.trace_id, self.parent_id, u8::from(self.sampled))
    }
}

/// New trace contexts for requests that bring none: a 64-bit prefix for the process (random at start,
/// or given, so a test is deterministic), then a counter — unique without a shared source.
#[derive(Debug)]
pub struct TraceIds {
    prefix: u64,
    next: AtomicU64,
}

impl TraceIds {
    pub fn new(prefix: u64) -> TraceIds {
        TraceIds { prefix, next: AtomicU64::new(1) }
    }

    pub fn next(&self) -> TraceParent {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        TraceParent { trace_id: (u128::from(self.prefix) << 64) | u128::from(n), parent_id: n, sampled: true }
    }
}

/// The span an order's step runs in: its number and its trace id (empty when the order has none: placed
/// before traces were kept). At debug level, like the path's own events: with `orderly::trace=debug`
/// the order's info events (paid, closed, rejected) carry the trace id too; without it no span is made
/// (a disabled span costs one check).
pub fn order_span(order_no: OrderNo, trace: Option<&str>) -> tracing::Span {
    let span = tracing::debug_span!(target: TARGET, "order", %order_no, trace_id = tracing::field::Empty);
    if !span.is_disabled()
        && let Some(trace) = trace.and_then(TraceParent::parse)
    {
        span.record("trace_id", trace.trace_id_hex());
        // Exported over OTLP (when the process does), the span joins the order's trace; without that
        // layer this does nothing.
        let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&span, trace.otel_context());
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_bad_ones_are_refused() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(text).expect("the W3C example");
        assert_eq!(parsed.to_string(), text);
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(parsed.sampled);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        // A later version may carry more parts.
        assert!(TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more").is_some());
    }

    #[test]
    fn new_trace_ids_are_unique_within_a_process_and_carry_its_prefix() {
        let ids = TraceIds::new(7);
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a.trace_id, b.trace_id);
        assert_eq!(a.trace_id >> 64, 7);
        assert_eq!(TraceParent::parse(&a.to_string()), Some(a));
    }
}
