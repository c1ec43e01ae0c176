//! Settings that change without a restart: the flow's timers and bounds ([`FlowConfig`], every key
//! under `flow.`) and the entry's limits ([`RateLimitConfig`], every key under `rate_limit.`).
//!
//! A process starts from its own configuration (file and environment) and lays the registry's
//! [`Settings`] over it. A value is checked before it is written ([`Live::with`]) and again by every
//! process that applies it: a bad one is refused with the key named, and nothing changes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{FlowConfig, RateLimitConfig};
use crate::registry::Settings;

/// What can change at run time, as one value.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Live {
    pub flow: FlowConfig,
    pub rate_limit: RateLimitConfig,
}

/// The longest duration a setting may give (30 days).
const DURATION_MS_MAX: u64 = 30 * 24 * 3600 * 1000;

/// The longest a rule may make a request wait for its turn (a rule's `queue_ms`).
const QUEUE_MS_MAX: u64 = 10_000;

/// A setting refused, naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("setting {key}: {reason}")]
pub struct SettingError {
    pub key: String,
    pub reason: String,
}

impl SettingError {
    fn new(key: &str, reason: impl ToString) -> SettingError {
        SettingError { key: key.to_owned(), reason: reason.to_string() }
    }
}

impl Live {
    /// This configuration with `settings` laid over it, each checked.
    pub fn with(&self, settings: &Settings) -> Result<Live, SettingError> {
        let mut tree = serde_json::to_value(self).map_err(|e| SettingError::new("*", e))?;
        for (key, text) in settings {
            let value: Value = serde_json::from_str(text)
                .map_err(|e| SettingError::new(key, format!("{text:?} is not a JSON value ({e})")))?;
            let slot = key
                .split('.')
                .try_fold(&mut tree, |node, part| match node {
                    Value::Object(map) => map.get_mut(part),
                    _ => None,
                })
                .filter(|slot| !slot.is_object())
                .ok_or_else(|| SettingError::new(key, "no such setting"))?;
            *slot = value;
            // One key at a time, so a value of the wrong type is blamed on its own key.
            serde_json::from_value::<Live>(tree.clone()).map_err(|e| SettingError::new(key, e))?;
        }
        let live: Live = serde_json::from_value(tree).map_err(|e| SettingError::new("*", e))?;
        live.check()?;
        Ok(live)
    }

    /// Every setting key and its value in this configuration, as text (what `config list` shows).
    pub fn flatten(&self) -> Settings {
        fn walk(prefix: &str, value: &Value, out: &mut Settings) {
            match value {
                Value::Object(map) => {
                    for (name, child) in map {
                        let key = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
                        walk(&key, child, out);
                    }
                }
                leaf => {
                    out.insert(prefix.to_owned(), leaf.to_string());
                }
            }
        }
        let mut out = Settings::new();
        if let Ok(tree) = serde_json::to_value(self) {
            walk("", &tree, &mut out);
        }
        out
    }

    /// The bounds a value must keep (types are checked by deserialising).
    fn check(&self) -> Result<(), SettingError> {
        let f = &self.flow;
        let positive: [(&str, u64); 14] = [
            ("flow.cart.lines_max", f.cart.lines_max as u64),
            ("flow.cart.quantity_per_line_max", u64::from(f.cart.quantity_per_line_max)),
            ("flow.reservation_check_delay_ms", f.reservation_check_delay_ms),
            ("flow.unpaid_timeout_ms", f.unpaid_timeout_ms),
            ("flow.payment_call_timeout_ms", f.payment_call_timeout_ms),
            ("flow.reconcile_backoff_ms", f.reconcile_backoff_ms),
            ("flow.worker_batch_max", f.worker_batch_max as u64),
            ("flow.worker_concurrency_max", f.worker_concurrency_max as u64),
            ("flow.delivery_attempts_max", u64::from(f.delivery_attempts_max)),
            ("flow.entry_call_timeout_ms", f.entry_call_timeout_ms),
            ("flow.page_size_max", f.page_size_max as u64),
            ("flow.buyer_caps.window_ms", f.buyer_caps.window_ms),
            ("rate_limit.orders_per_second", u64::from(self.rate_limit.orders_per_second)),
            ("rate_limit.burst", u64::from(self.rate_limit.burst)),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(SettingError::new(key, "must be at least 1"));
        }
        // Added to the clock: a huge one would wrap, or overflow the store's signed columns.
        let durations = [
            ("flow.reservation_check_delay_ms", f.reservation_check_delay_ms),
            ("flow.unpaid_timeout_ms", f.unpaid_timeout_ms),
            ("flow.payment_call_timeout_ms", f.payment_call_timeout_ms),
            ("flow.reconcile_backoff_ms", f.reconcile_backoff_ms),
            ("flow.reconcile_backoff_ms_max", f.reconcile_backoff_ms_max),
            ("flow.redelivery_delay_ms", f.redelivery_delay_ms),
            ("flow.redelivery_delay_ms_max", f.redelivery_delay_ms_max),
            ("flow.unpaid_timeout_retry_ms", f.unpaid_timeout_retry_ms),
            ("flow.entry_call_timeout_ms", f.entry_call_timeout_ms),
            ("flow.catalog_cache_ms", f.catalog_cache_ms),
            ("flow.sold_out_memory_ms", f.sold_out_memory_ms),
            ("flow.order_cache_second_delete_ms", f.order_cache_second_delete_ms),
            ("flow.lease_ms", f.lease_ms),
            ("flow.buyer_caps.window_ms", f.buyer_caps.window_ms),
        ];
        if let Some((key, _)) = durations.iter().find(|(_, ms)| *ms > DURATION_MS_MAX) {
            return Err(SettingError::new(key, format!("must be at most {DURATION_MS_MAX} (30 days)")));
        }
        if f.reconcile_backoff_ms_max < f.reconcile_backoff_ms {
            return Err(SettingError::new(
                "flow.reconcile_backoff_ms_max",
                "must be at least flow.reconcile_backoff_ms",
            ));
        }
        if f.redelivery_delay_ms_max < f.redelivery_delay_ms {
            return Err(SettingError::new("flow.redelivery_delay_ms_max", "must be at least flow.redelivery_delay_ms"));
        }
        if f.lease_ms < 2 {
            return Err(SettingError::new("flow.lease_ms", "must be at least 2"));
        }
        self.check_limits()
    }

    /// The entry's rules and the adaptive limit's parameters: bounds the limiters rely on (no bucket
    /// without a token, no limit below one, priorities in their order).
    fn check_limits(&self) -> Result<(), SettingError> {
        let r = &self.rate_limit;
        let rules =
            [("rate_limit.buyer", &r.buyer), ("rate_limit.commodity", &r.commodity), ("rate_limit.shop", &r.shop)];
        for (name, rule) in rules {
            if rule.per_second > 0 && rule.burst == 0 {
                return Err(SettingError::new(&format!("{name}.burst"), "must be at least 1 while the rule is on"));
            }
        }
        let queues = [
            ("rate_limit.queue_ms", r.queue_ms),
            ("rate_limit.buyer.queue_ms", r.buyer.queue_ms),
            ("rate_limit.commodity.queue_ms", r.commodity.queue_ms),
            ("rate_limit.shop.queue_ms", r.shop.queue_ms),
        ];
        if let Some((key, _)) = queues.iter().find(|(_, ms)| *ms > QUEUE_MS_MAX) {
            return Err(SettingError::new(key, format!("must be at most {QUEUE_MS_MAX}")));
        }
        if !(1..=1_000_000).contains(&r.in_flight_max) {
            return Err(SettingError::new("rate_limit.in_flight_max", "must be 1 to 1000000"));
        }
        let a = &r.adaptive;
        // Above `in_flight_max` it is that: lowering the ceiling alone must not be refused.
        if a.min == 0 {
            return Err(SettingError::new("rate_limit.adaptive.min", "must be at least 1"));
        }
        if !(1.0..=10.0).contains(&a.rtt_tolerance) {
            return Err(SettingError::new("rate_limit.adaptive.rtt_tolerance", "must be 1 to 10"));
        }
        if !(a.smoothing > 0.0 && a.smoothing <= 1.0) {
            return Err(SettingError::new("rate_limit.adaptive.smoothing", "must be above 0 and at most 1"));
        }
        if !(1..=100_000).contains(&a.long_window) {
            return Err(SettingError::new("rate_limit.adaptive.long_window", "must be 1 to 100000"));
        }
        if !(1..=60_000).contains(&a.window_ms) {
            return Err(SettingError::new("rate_limit.adaptive.window_ms", "must be 1 to 60000"));
        }
        if !(1..=100_000).contains(&a.window_requests) {
            return Err(SettingError::new("rate_limit.adaptive.window_requests", "must be 1 to 100000"));
        }
        let p = &a.priorities;
        if !(p.orders_below > 0.0 && p.orders_below <= 1.0) {
            return Err(SettingError::new(
                "rate_limit.adaptive.priorities.orders_below",
                "must be above 0 and at most 1",
            ));
        }
        if !(p.queries_below > 0.0 && p.queries_below <= p.orders_below) {
            return Err(SettingError::new(
                "rate_limit.adaptive.priorities.queries_below",
                "must be above 0 and at most rate_limit.adaptive.priorities.orders_below",
            ));
        }
        if !(0.0..=0.3).contains(&p.guaranteed) {
            return Err(SettingError::new("rate_limit.adaptive.priorities.guaranteed", "must be 0 to 0.3"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(key: &str, value: &str) -> Settings {
        Settings::from([(key.to_owned(), value.to_owned())])
    }

    #[test]
    fn a_setting_is_laid_over_the_configuration() {
        let live = Live::default().with(&one("rate_limit.orders_per_second", "250")).expect("valid");
        assert_eq!(live.rate_limit.orders_per_second, 250);
        let live = live.with(&one("flow.cart.lines_max", "3")).expect("valid");
        assert_eq!(live.flow.cart.lines_max, 3);
        assert_eq!(live.rate_limit.orders_per_second, 250, "earlier settings stay");
    }

    #[test]
    fn a_bad_setting_is_refused_naming_its_key() {
        let cases = [
            ("rate_limit.orders_per_second", "\"fast\"", "invalid type"),
            ("rate_limit.orders_per_second", "0", "at least 1"),
            ("rate_limit.orders_per_second", "-5", "invalid value"),
            ("flow.unpaid_timeout_ms", "soon", "not a JSON value"),
            ("flow.no_such_timer_ms", "5", "no such setting"),
            ("flow", "{}", "no such setting"),
            ("flow.cart", "{}", "no such setting"),
            ("flow.cart.lines_max", "0", "at least 1"),
            ("flow.unpaid_timeout_ms", "18446744073709551615", "at most"),
            ("rate_limit.in_flight_max", "0", "1 to 1000000"),
            ("rate_limit.adaptive.min", "0", "at least 1"),
            ("rate_limit.adaptive.rtt_tolerance", "0.5", "1 to 10"),
            ("rate_limit.adaptive.smoothing", "0", "above 0"),
            ("rate_limit.adaptive.priorities.orders_below", "1.5", "at most 1"),
            ("rate_limit.adaptive.priorities.guaranteed", "0.5", "0 to 0.3"),
            ("rate_limit.commodity.queue_ms", "60000", "at most 10000"),
            ("flow.reconcile_backoff_ms_max", "1", "at least flow.reconcile_backoff_ms"),
        ];
        for (key, value, reason) in cases {
            let error = Live::default().with(&one(key, value)).expect_err(key);
            assert_eq!(error.key, key, "{value}");
            assert!(error.reason.contains(reason), "{key}={value}: {}", error.reason);
        }
    }

    #[test]
    fn the_limits_are_checked_as_a_whole() {
        let on_without_tokens = Settings::from([
            ("rate_limit.buyer.per_second".to_owned(), "5".to_owned()),
            ("rate_limit.buyer.burst".to_owned(), "0".to_owned()),
        ]);
        let error = Live::default().with(&on_without_tokens).expect_err("a rule with no token");
        assert_eq!(error.key, "rate_limit.buyer.burst");
        let off = one("rate_limit.buyer.burst", "0");
        Live::default().with(&off).expect("a rule that is off needs no burst");
        let queries_first = one("rate_limit.adaptive.priorities.orders_below", "0.5");
        let error = Live::default().with(&queries_first).expect_err("queries admitted above new orders");
        assert_eq!(error.key, "rate_limit.adaptive.priorities.queries_below");
    }

    #[test]
    fn every_listed_key_can_be_set_to_its_own_value() {
        let live = Live::default();
        let listed = live.flatten();
        assert!(listed.contains_key("rate_limit.in_flight_max"));
        assert!(listed.contains_key("rate_limit.adaptive.priorities.orders_below"));
        assert!(listed.contains_key("flow.unpaid_timeout_ms"));
        assert!(listed.contains_key("flow.cart.lines_max"));
        let same = live.with(&listed).expect("its own values are valid");
        assert_eq!(same.flatten(), live.flatten());
    }
}
