//! Settings that change without a restart: the flow's timers and bounds ([`FlowConfig`], every key
//! under `flow.`) and the entry's rate limit (`rate_limit.orders_per_second`, `rate_limit.burst`).
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

/// Keys that exist but are read once at start.
const RESTART_ONLY: [&str; 1] = ["rate_limit.in_flight_max"];

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
            if RESTART_ONLY.contains(&key.as_str()) {
                return Err(SettingError::new(key, "is read once at start: change it in the configuration"));
            }
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
        let positive: [(&str, u64); 13] = [
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
            ("rate_limit.in_flight_max", "10", "read once at start"),
            ("flow.reconcile_backoff_ms_max", "1", "at least flow.reconcile_backoff_ms"),
        ];
        for (key, value, reason) in cases {
            let error = Live::default().with(&one(key, value)).expect_err(key);
            assert_eq!(error.key, key, "{value}");
            assert!(error.reason.contains(reason), "{key}={value}: {}", error.reason);
        }
    }

    #[test]
    fn every_listed_key_can_be_set_to_its_own_value() {
        let live = Live::default();
        let mut listed = live.flatten();
        for key in RESTART_ONLY {
            assert!(listed.remove(key).is_some(), "{key} is listed");
        }
        assert!(listed.contains_key("flow.unpaid_timeout_ms"));
        assert!(listed.contains_key("flow.cart.lines_max"));
        let same = live.with(&listed).expect("its own values are valid");
        assert_eq!(same.flatten(), live.flatten());
    }
}
