//! Where a cart waits at the entry: the steps of `POST /api/orders` as the APIs time them
//! (`orderly_entry_step_seconds`, by step: the reserve, the pending views, the creates' publish, the
//! claim) and the server's whole answer (`orderly_http_request_seconds` of that route), read from every
//! API's `GET /metrics` around a phase and summed over the APIs. A step's mean over a phase is its
//! seconds ÷ its carts; a refused cart counts in the steps it passed.

use std::collections::BTreeMap;

/// Seconds and observations of one histogram.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Timed {
    pub seconds: f64,
    pub count: u64,
}

/// Histograms by name: an entry step's name, or [`ANSWER`].
pub type Waits = BTreeMap<String, Timed>;

/// The server's whole answer to a cart.
pub const ANSWER: &str = "POST /api/orders (server)";

/// The entry's steps in the order a cart takes them (docs/ARCHITECTURE.md, "The flow"); a step not named
/// here is reported after them.
pub const STEPS: [&str; 5] = ["guards", "reserve", "pending", "creates", "claim"];

/// The histograms of one `GET /metrics` text (Prometheus's text format) that say where a cart waits.
pub fn parse(metrics: &str) -> Waits {
    let mut waits = Waits::new();
    for line in metrics.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let Some((name, labels)) = series.split_once('{') else { continue };
        let labels = labels.trim_end_matches('}');
        let label = |key: &str| {
            labels.split(',').find_map(|pair| pair.strip_prefix(key)?.strip_prefix("=\"")?.strip_suffix('"'))
        };
        let Some((histogram, part @ ("sum" | "count"))) = name.rsplit_once('_') else { continue };
        let key = match histogram {
            "orderly_entry_step_seconds" => label("step").map(str::to_owned),
            "orderly_http_request_seconds"
                if label("route") == Some("/api/orders") && label("method") == Some("POST") =>
            {
                Some(ANSWER.to_owned())
            }
            _ => None,
        };
        let Some(key) = key else { continue };
        let timed = waits.entry(key).or_default();
        match part {
            "sum" => timed.seconds += value,
            _ => timed.count += value as u64,
        }
    }
    waits
}

/// What each histogram gained between two readings.
pub fn spent(before: &Waits, after: &Waits) -> Waits {
    after
        .iter()
        .map(|(name, a)| {
            let b = before.get(name).copied().unwrap_or_default();
            (name.clone(), Timed { seconds: (a.seconds - b.seconds).max(0.0), count: a.count.saturating_sub(b.count) })
        })
        .filter(|(_, timed)| timed.count > 0)
        .collect()
}

/// Every API's readings summed. An API that does not answer is left out of this reading (and so of the
/// phase: its gain is then counted from zero and overstated — the report is for a cluster that stays up).
pub fn sum(readings: impl IntoIterator<Item = Waits>) -> Waits {
    let mut total = Waits::new();
    for reading in readings {
        for (name, timed) in reading {
            let sum = total.entry(name).or_default();
            sum.seconds += timed.seconds;
            sum.count += timed.count;
        }
    }
    total
}

/// Mean milliseconds per cart of each step, in the flow's order, then the answer.
pub fn means_ms(waits: &Waits) -> Vec<(String, f64)> {
    let mean = |t: &Timed| t.seconds * 1_000.0 / t.count.max(1) as f64;
    let known = STEPS.iter().filter_map(|step| waits.get(*step).map(|t| ((*step).to_owned(), mean(t))));
    let others = waits
        .iter()
        .filter(|(name, _)| !STEPS.contains(&name.as_str()) && name.as_str() != ANSWER)
        .map(|(name, t)| (name.clone(), mean(t)));
    let answer = waits.get(ANSWER).map(|t| (ANSWER.to_owned(), mean(t)));
    known.chain(others).chain(answer).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# TYPE orderly_entry_step_seconds summary\n\
        orderly_entry_step_seconds_sum{step=\"reserve\"} 3.5\n\
        orderly_entry_step_seconds_count{step=\"reserve\"} 1000\n\
        orderly_entry_step_seconds{step=\"reserve\",quantile=\"0.5\"} 0.002\n\
        orderly_entry_step_seconds_sum{step=\"pending\"} 2\n\
        orderly_entry_step_seconds_count{step=\"pending\"} 800\n\
        orderly_http_request_seconds_sum{route=\"/api/orders\",method=\"POST\"} 9\n\
        orderly_http_request_seconds_count{route=\"/api/orders\",method=\"POST\"} 1000\n\
        orderly_http_request_seconds_sum{route=\"/api/orders\",method=\"GET\"} 100\n\
        orderly_http_request_seconds_count{route=\"/api/orders\",method=\"GET\"} 5\n\
        orderly_http_request_seconds_sum{route=\"/api/orders/{order_no}/pay\",method=\"POST\"} 100\n\
        orderly_http_request_seconds_count{route=\"/api/orders/{order_no}/pay\",method=\"POST\"} 5\n";

    #[test]
    fn the_entry_steps_and_the_carts_answers_are_read_and_nothing_else() {
        let waits = parse(METRICS);
        assert_eq!(
            waits,
            Waits::from([
                (ANSWER.to_owned(), Timed { seconds: 9.0, count: 1000 }),
                ("pending".to_owned(), Timed { seconds: 2.0, count: 800 }),
                ("reserve".to_owned(), Timed { seconds: 3.5, count: 1000 }),
            ])
        );
    }

    #[test]
    fn a_phase_is_the_gain_of_every_api_in_the_flows_order() {
        let before = sum([parse(METRICS), Waits::new()]);
        let mut later = parse(METRICS);
        later.insert("reserve".to_owned(), Timed { seconds: 5.5, count: 1500 });
        later.insert(ANSWER.to_owned(), Timed { seconds: 14.0, count: 1500 });
        later.insert("claim".to_owned(), Timed { seconds: 0.5, count: 500 });
        let other_api = Waits::from([("reserve".to_owned(), Timed { seconds: 1.0, count: 500 })]);
        let phase = spent(&before, &sum([later, other_api]));
        let means: Vec<(String, f64)> = means_ms(&phase);
        assert_eq!(
            means,
            vec![("reserve".to_owned(), 3.0), ("claim".to_owned(), 1.0), (ANSWER.to_owned(), 10.0)],
            "pending took no cart in the phase: left out"
        );
    }
}
