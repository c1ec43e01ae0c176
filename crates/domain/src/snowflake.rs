//! Snowflake ids: 41 bits of milliseconds since [`EPOCH_MS`], 10 bits of worker id, 12 bits of sequence.
//!
//! Ordered by time (bigint-friendly inserts, the reason the seed moved off UUIDs) and unique per worker:
//! - the same millisecond is told apart by the sequence;
//! - when the sequence runs out, or the clock steps back, the generator keeps its own logical time
//!   (`last_ms`) and moves it forward, borrowing from the future, up to [`DRIFT_MS_MAX`];
//! - across restarts the caller passes a `floor_ms` no earlier than any id issued before (see the
//!   leased generator in `app`), so a clock that stepped back while down cannot repeat an id.

use serde::{Deserialize, Serialize};

/// 2024-01-01T00:00:00Z in Unix milliseconds.
pub const EPOCH_MS: u64 = 1_704_067_200_000;
pub const WORKER_BITS: u32 = 10;
pub const SEQUENCE_BITS: u32 = 12;
pub const WORKER_ID_MAX: u16 = (1 << WORKER_BITS) - 1;
const SEQUENCE_MAX: u64 = (1 << SEQUENCE_BITS) - 1;
/// How far the logical time may run ahead of the wall clock before the generator refuses.
pub const DRIFT_MS_MAX: u64 = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SnowflakeId(pub u64);

impl SnowflakeId {
    /// Unix milliseconds at which the id was issued (logical time).
    pub fn unix_ms(self) -> u64 {
        (self.0 >> (WORKER_BITS + SEQUENCE_BITS)) + EPOCH_MS
    }

    pub fn worker(self) -> u16 {
        ((self.0 >> SEQUENCE_BITS) & u64::from(WORKER_ID_MAX)) as u16
    }
}

/// The wall clock is more than [`DRIFT_MS_MAX`] behind the ids already issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("clock is {behind_ms} ms behind the last issued id")]
pub struct ClockBehind {
    pub behind_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Snowflake {
    worker: u16,
    /// Logical time of the last id, in ms since [`EPOCH_MS`]; never decreases.
    last_ms: u64,
    sequence: u64,
}

impl Snowflake {
    /// `floor_unix_ms`: no id will carry an earlier time than this (use the last lease after a restart).
    pub fn new(worker: u16, floor_unix_ms: u64) -> Snowflake {
        assert!(worker <= WORKER_ID_MAX, "worker id must fit in {WORKER_BITS} bits");
        Snowflake { worker, last_ms: floor_unix_ms.saturating_sub(EPOCH_MS), sequence: SEQUENCE_MAX }
    }

    /// Logical Unix time of the last id issued (or of the floor).
    pub fn last_unix_ms(&self) -> u64 {
        self.last_ms + EPOCH_MS
    }

    pub fn next(&mut self, now_unix_ms: u64) -> Result<SnowflakeId, ClockBehind> {
        let now_ms = now_unix_ms.saturating_sub(EPOCH_MS);
        if now_ms > self.last_ms {
            self.last_ms = now_ms;
            self.sequence = 0;
        } else if self.sequence < SEQUENCE_MAX {
            self.sequence += 1;
        } else {
            if self.last_ms + 1 > now_ms + DRIFT_MS_MAX {
                return Err(ClockBehind { behind_ms: self.last_ms - now_ms });
            }
            self.last_ms += 1;
            self.sequence = 0;
        }
        let id =
            (self.last_ms << (WORKER_BITS + SEQUENCE_BITS)) | (u64::from(self.worker) << SEQUENCE_BITS) | self.sequence;
        Ok(SnowflakeId(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const T0: u64 = EPOCH_MS + 1_000_000;

    #[test]
    fn ids_are_increasing_within_a_millisecond_and_across() {
        let mut generator = Snowflake::new(3, 0);
        let mut previous = SnowflakeId(0);
        for step in 0..10_000u64 {
            let id = generator.next(T0 + step / 1000).expect("clock is fine");
            assert!(id > previous);
            assert_eq!(id.worker(), 3);
            previous = id;
        }
    }

    #[test]
    fn clock_stepping_back_never_repeats_and_is_bounded() {
        let mut generator = Snowflake::new(1, 0);
        let mut seen = HashSet::new();
        let first = generator.next(T0).expect("fine");
        seen.insert(first);
        // The clock jumps one second back: ids continue on logical time, still increasing.
        for _ in 0..5_000 {
            let id = generator.next(T0 - 1_000).expect("within drift");
            assert!(seen.insert(id));
            assert!(id.unix_ms() >= first.unix_ms());
        }
        // Far behind: it must refuse rather than run off into the future.
        let mut generator = Snowflake::new(1, T0 + DRIFT_MS_MAX * 10);
        let refused = (0..10_000).find_map(|_| generator.next(T0).err());
        assert!(refused.is_some());
    }

    #[test]
    fn floor_from_a_previous_run_keeps_ids_after_it() {
        let mut before = Snowflake::new(2, 0);
        let last = (0..100).map(|_| before.next(T0 + 500).expect("fine")).last().expect("issued");
        // Restart with the clock 400 ms behind, but with the previous run's lease as floor.
        let mut after = Snowflake::new(2, before.last_unix_ms() + 1);
        assert!(after.next(T0 + 100).expect("within drift") > last);
    }

    #[test]
    fn workers_never_collide() {
        let mut a = Snowflake::new(1, 0);
        let mut b = Snowflake::new(2, 0);
        let mut seen = HashSet::new();
        for step in 0..3_000 {
            assert!(seen.insert(a.next(T0 + step / 100).expect("fine")));
            assert!(seen.insert(b.next(T0 + step / 100).expect("fine")));
        }
    }
}
