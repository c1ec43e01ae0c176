//! Clocks: the system's, and a manual one tests move by hand. Both tell a step of the wall clock from
//! the passing of time, so deadlines are judged monotonically ([`Clock::judged_now_ms`]).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use orderly_app::Clock;
use orderly_app::ports::{CLOCK_JUMP_TOLERANCE_MS, WallSteps};

/// The wall clock, checked against the monotonic clock from the process's first reading.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

/// The process's first reading: (monotonic instant, wall ms).
static BASELINE: OnceLock<(Instant, u64)> = OnceLock::new();
/// The steps the process's wall clock took.
static STEPS: WallSteps = WallSteps::new();

fn wall_ms() -> u64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// `wall − monotonic`, saturated.
fn offset_of(wall_ms: u64, monotonic_ms: u64) -> i64 {
    let difference = i128::from(wall_ms) - i128::from(monotonic_ms);
    i64::try_from(difference).unwrap_or(if difference > 0 { i64::MAX } else { i64::MIN })
}

/// The offset when it is a jump (beyond the tolerance), else 0.
fn jump_of(offset_ms: i64) -> i64 {
    if offset_ms.abs() > CLOCK_JUMP_TOLERANCE_MS { offset_ms } else { 0 }
}

/// A reading of the system clock: (wall ms, wall − monotonic), the steps it shows recorded and logged.
fn read_system() -> (u64, i64) {
    let wall = wall_ms();
    let (start, start_wall) = *BASELINE.get_or_init(|| (Instant::now(), wall));
    let elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    let offset = offset_of(wall, start_wall.saturating_add(elapsed_ms));
    if let Some(change_ms) = STEPS.observe(wall, offset) {
        tracing::warn!(
            clock_step_ms = change_ms,
            clock_jump_ms = jump_of(offset),
            "the wall clock stepped; deadlines are judged by the monotonic clock (never early)"
        );
    }
    (wall, offset)
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        read_system().0
    }

    fn jump_ms(&self) -> i64 {
        jump_of(read_system().1)
    }

    fn judged_now_ms(&self, stamp_ms: u64) -> u64 {
        STEPS.judged_now_ms(read_system().0, stamp_ms)
    }
}

/// A clock that moves only when told to. [`ManualClock::advance_ms`] is time passing;
/// [`ManualClock::step_wall_ms`] sets the wall clock forward or back without time passing.
#[derive(Debug)]
pub struct ManualClock {
    wall: AtomicU64,
    monotonic: AtomicU64,
    steps: WallSteps,
}

impl ManualClock {
    pub fn new(now_ms: u64) -> ManualClock {
        ManualClock { wall: AtomicU64::new(now_ms), monotonic: AtomicU64::new(now_ms), steps: WallSteps::new() }
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
    fn read(&self) -> (u64, i64) {
        let wall = self.wall.load(Ordering::SeqCst);
        let offset = offset_of(wall, self.monotonic.load(Ordering::SeqCst));
        self.steps.observe(wall, offset);
        (wall, offset)
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.read().0
    }
    fn jump_ms(&self) -> i64 {
        jump_of(self.read().1)
    }
    fn judged_now_ms(&self, stamp_ms: u64) -> u64 {
        self.steps.judged_now_ms(self.read().0, stamp_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_forward_does_not_move_deadlines_of_stamps_made_before_it() {
        let clock = ManualClock::new(1_000_000);
        clock.advance_ms(500);
        let before = clock.now_ms();
        assert_eq!((clock.jump_ms(), clock.judged_now_ms(before)), (0, 1_000_500));
        clock.step_wall_ms(60_000);
        assert_eq!(clock.now_ms(), 1_060_500);
        let after = clock.now_ms();
        assert_eq!(clock.jump_ms(), 60_000);
        assert_eq!(clock.judged_now_ms(before), 1_000_500, "a stamp from before: in its own frame");
        assert_eq!(clock.judged_now_ms(after), 1_060_500, "a stamp from after: the wall clock, not late by the step");
        clock.advance_ms(10);
        assert_eq!((clock.judged_now_ms(before), clock.judged_now_ms(after)), (1_000_510, 1_060_510));
        // A second step forward: a stamp from before both is judged without either.
        clock.step_wall_ms(30_000);
        let later = clock.now_ms();
        assert_eq!(clock.judged_now_ms(before), 1_000_510);
        assert_eq!(clock.judged_now_ms(after), 1_060_510);
        assert_eq!(clock.judged_now_ms(later), 1_090_510);
        // Back: deadlines follow the wall clock, which is late, never early.
        clock.step_wall_ms(-120_000);
        assert_eq!(clock.jump_ms(), -30_000);
        assert!(clock.judged_now_ms(before) <= 1_000_510 && clock.judged_now_ms(after) <= 1_060_510);
    }

    #[test]
    fn drift_within_the_tolerance_is_not_a_step() {
        let clock = ManualClock::new(1_000_000);
        let stamp = clock.now_ms();
        clock.step_wall_ms(CLOCK_JUMP_TOLERANCE_MS);
        assert_eq!((clock.jump_ms(), clock.judged_now_ms(stamp)), (0, 1_000_000 + 1_000));
    }

    #[test]
    fn the_system_clock_has_not_jumped_in_a_test() {
        let clock = SystemClock;
        let before = clock.now_ms();
        assert_eq!(clock.jump_ms(), 0);
        assert!(clock.judged_now_ms(before) >= before);
    }
}
