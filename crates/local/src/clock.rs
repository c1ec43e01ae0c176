//! Clocks: the system's, and a manual one tests move by hand. Both tell a step of the wall clock from
//! the passing of time, so deadlines are judged monotonically ([`Clock::deadline_now_ms`]).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use orderly_app::Clock;
use orderly_app::ports::CLOCK_JUMP_TOLERANCE_MS;

/// The wall clock, checked against the monotonic clock from the process's first reading.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

/// The process's first reading: (monotonic instant, wall ms).
static BASELINE: OnceLock<(Instant, u64)> = OnceLock::new();
/// The last jump logged, so a step is said once, not on every reading.
static LOGGED_JUMP_MS: AtomicI64 = AtomicI64::new(0);

fn wall_ms() -> u64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// `wall − monotonic` when it is a jump (beyond the tolerance), else 0.
fn jump_of(wall_ms: u64, monotonic_ms: u64) -> i64 {
    let difference = i128::from(wall_ms) - i128::from(monotonic_ms);
    let difference = i64::try_from(difference).unwrap_or(if difference > 0 { i64::MAX } else { i64::MIN });
    if difference.abs() > CLOCK_JUMP_TOLERANCE_MS { difference } else { 0 }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let now = wall_ms();
        BASELINE.get_or_init(|| (Instant::now(), now));
        now
    }

    fn jump_ms(&self) -> i64 {
        let wall = wall_ms();
        let (start, start_wall) = *BASELINE.get_or_init(|| (Instant::now(), wall));
        let elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let jump = jump_of(wall, start_wall.saturating_add(elapsed_ms));
        let logged = LOGGED_JUMP_MS.load(Ordering::Relaxed);
        if (jump - logged).abs() > CLOCK_JUMP_TOLERANCE_MS
            && LOGGED_JUMP_MS.compare_exchange(logged, jump, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            if jump == 0 {
                tracing::warn!("the wall clock agrees with the monotonic clock again");
            } else {
                tracing::warn!(
                    clock_jump_ms = jump,
                    "the wall clock jumped; deadlines are judged by the monotonic clock (never early)"
                );
            }
        }
        jump
    }
}

/// A clock that moves only when told to. [`ManualClock::advance_ms`] is time passing;
/// [`ManualClock::step_wall_ms`] sets the wall clock forward or back without time passing.
#[derive(Debug)]
pub struct ManualClock {
    wall: AtomicU64,
    monotonic: AtomicU64,
}

impl ManualClock {
    pub fn new(now_ms: u64) -> ManualClock {
        ManualClock { wall: AtomicU64::new(now_ms), monotonic: AtomicU64::new(now_ms) }
    }
    pub fn advance_ms(&self, ms: u64) {
        self.wall.fetch_add(ms, Ordering::SeqCst);
        self.monotonic.fetch_add(ms, Ordering::SeqCst);
    }
    /// A step of the wall clock (an operator's `date -s`, a bad NTP answer): no time passes.
    pub fn step_wall_ms(&self, ms: i64) {
        let wall = self.wall.load(Ordering::SeqCst);
        self.wall.store(wall.saturating_add_signed(ms), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.wall.load(Ordering::SeqCst)
    }
    fn jump_ms(&self) -> i64 {
        jump_of(self.wall.load(Ordering::SeqCst), self.monotonic.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_forward_does_not_move_deadlines() {
        let clock = ManualClock::new(1_000_000);
        clock.advance_ms(500);
        assert_eq!((clock.jump_ms(), clock.deadline_now_ms()), (0, 1_000_500));
        clock.step_wall_ms(60_000);
        assert_eq!(clock.now_ms(), 1_060_500);
        assert_eq!((clock.jump_ms(), clock.deadline_now_ms()), (60_000, 1_000_500));
        clock.advance_ms(10);
        assert_eq!(clock.deadline_now_ms(), 1_000_510);
        // Back: deadlines follow the wall clock, which is late, never early.
        clock.step_wall_ms(-120_000);
        assert_eq!((clock.jump_ms(), clock.deadline_now_ms()), (-60_000, 940_510));
        // Drift within the tolerance is not a jump.
        clock.step_wall_ms(60_000 + CLOCK_JUMP_TOLERANCE_MS);
        assert_eq!((clock.jump_ms(), clock.deadline_now_ms()), (0, 1_001_510));
    }

    #[test]
    fn the_system_clock_has_not_jumped_in_a_test() {
        let clock = SystemClock;
        let before = clock.now_ms();
        assert_eq!(clock.jump_ms(), 0);
        assert!(clock.deadline_now_ms() >= before);
    }
}
