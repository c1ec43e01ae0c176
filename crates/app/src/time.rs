//! Time, injected: the [`Clock`] port, the steps of a wall clock ([`WallSteps`]) and [`ManualClock`],
//! which moves only when a test tells it to. The system's clock is an adapter (`orderly-clock`): nothing
//! in `app` or `domain` reads the OS's clocks or sleeps on its own (`clippy.toml` says so).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

/// Milliseconds since the Unix epoch. Injected so tests and simulations control time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The wall clock: stamps (accepted, updated) and the due times of delayed messages.
    fn now_ms(&self) -> u64;
    /// How far the wall clock has moved away from this process's monotonic time since it started, when
    /// that is more than [`CLOCK_JUMP_TOLERANCE_MS`] (a step of the clock, not its slow correction);
    /// 0 otherwise. Positive: stepped forward. For the log.
    fn jump_ms(&self) -> i64 {
        0
    }
    /// This process's monotonic time, in ms from an origin of its own: a step of the wall clock does
    /// not move it. For intervals measured within the process (how long ago something was read), never
    /// stored or sent.
    fn steady_ms(&self) -> u64;
    /// The time a deadline counted from `stamp_ms` (a wall stamp: an order's acceptance, a charge's
    /// start) is judged by: the wall clock, less every forward step this process saw it take after the
    /// stamp was made ([`WallSteps`]). So a clock stepped forward cannot make a deadline fire early, and a
    /// stamp made after the step is judged in the step's own frame, not late by it. A clock stepped back
    /// makes deadlines late, never early.
    fn judged_now_ms(&self, stamp_ms: u64) -> u64 {
        let _ = stamp_ms;
        self.now_ms()
    }
    /// Completes once `ms` of this clock's time have passed (monotonic time: a step of the wall clock
    /// neither ends nor extends it). Every delay and timeout the logic waits for goes through here, so a
    /// test moving a manual clock decides when they end.
    fn sleep_ms(&self, ms: u64) -> Sleep;
}

/// A wait on a [`Clock`]: owns everything it needs, so it can be spawned.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// `call`, unless `limit_ms` of `clock`'s time pass first (`None`: cut off; the call is dropped).
pub async fn within<T>(clock: &dyn Clock, limit_ms: u64, call: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        biased;
        answer = call => Some(answer),
        () = clock.sleep_ms(limit_ms) => None,
    }
}

/// The forward steps of a wall clock, as one process saw them against its monotonic clock: where each
/// began (the first wall reading after it) and how far it went. A stamp made before a step lies at least
/// the step's size before where it began (the step skipped those wall times); one made after lies at or
/// after it — half the step's size is the boundary, so a step seen a little late still sorts them.
#[derive(Debug, Default)]
pub struct WallSteps {
    /// `wall − monotonic` at the last step seen: a reading within the tolerance of it is no new step.
    offset_ms: std::sync::atomic::AtomicI64,
    forward: std::sync::Mutex<Vec<(u64, u64)>>,
}

/// The forward steps remembered; older ones are forgotten (a stamp that old is past every deadline).
const WALL_STEPS_KEPT: usize = 16;

impl WallSteps {
    pub const fn new() -> WallSteps {
        WallSteps { offset_ms: std::sync::atomic::AtomicI64::new(0), forward: std::sync::Mutex::new(Vec::new()) }
    }

    /// Records a reading: `wall_ms`, and `offset_ms` = wall − monotonic. `Some(change)` when it shows a
    /// step (forward if positive) since the last one seen — for the caller to say once in its log.
    pub fn observe(&self, wall_ms: u64, offset_ms: i64) -> Option<i64> {
        use std::sync::atomic::Ordering;
        let seen = self.offset_ms.load(Ordering::Relaxed);
        let change = offset_ms.saturating_sub(seen);
        if change.abs() <= CLOCK_JUMP_TOLERANCE_MS
            || self.offset_ms.compare_exchange(seen, offset_ms, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return None;
        }
        if change > 0 {
            let mut forward = self.forward.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if forward.len() == WALL_STEPS_KEPT {
                forward.remove(0);
            }
            forward.push((wall_ms, change.unsigned_abs()));
        }
        Some(change)
    }

    /// [`Clock::judged_now_ms`] for a stamp, the wall clock reading `now_ms`.
    pub fn judged_now_ms(&self, now_ms: u64, stamp_ms: u64) -> u64 {
        let forward = self.forward.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        forward
            .iter()
            .filter(|(began_ms, size_ms)| stamp_ms.saturating_add(size_ms / 2) < *began_ms)
            .fold(now_ms, |judged, (_, size_ms)| judged.saturating_sub(*size_ms))
    }
}

/// A difference between the wall clock and the monotonic clock smaller than this is drift, not a jump.
pub const CLOCK_JUMP_TOLERANCE_MS: i64 = 1_000;

/// `wall − monotonic`, saturated.
pub fn offset_of(wall_ms: u64, monotonic_ms: u64) -> i64 {
    let difference = i128::from(wall_ms) - i128::from(monotonic_ms);
    i64::try_from(difference).unwrap_or(if difference > 0 { i64::MAX } else { i64::MIN })
}

/// The offset when it is a jump (beyond the tolerance), else 0.
pub fn jump_of(offset_ms: i64) -> i64 {
    if offset_ms.abs() > CLOCK_JUMP_TOLERANCE_MS { offset_ms } else { 0 }
}

/// A clock that moves only when told to. [`ManualClock::advance_ms`] is time passing (and ends the
/// sleeps it passes); [`ManualClock::step_wall_ms`] sets the wall clock forward or back without time
/// passing.
#[derive(Debug)]
pub struct ManualClock {
    wall: AtomicU64,
    /// Monotonic time, watched by the sleeps.
    monotonic: tokio::sync::watch::Sender<u64>,
    steps: WallSteps,
}

impl ManualClock {
    pub fn new(now_ms: u64) -> ManualClock {
        ManualClock {
            wall: AtomicU64::new(now_ms),
            monotonic: tokio::sync::watch::Sender::new(now_ms),
            steps: WallSteps::new(),
        }
    }
    pub fn advance_ms(&self, ms: u64) {
        self.wall.fetch_add(ms, Ordering::SeqCst);
        self.monotonic.send_modify(|monotonic| *monotonic = monotonic.saturating_add(ms));
    }
    /// A step of the wall clock (an operator's `date -s`, a bad NTP answer): no time passes.
    pub fn step_wall_ms(&self, ms: i64) {
        let wall = self.wall.load(Ordering::SeqCst);
        self.wall.store(wall.saturating_add_signed(ms), Ordering::SeqCst);
    }
    /// Sleeps not ended yet: a test waits for a task to start waiting before it moves the clock.
    pub fn sleepers(&self) -> usize {
        self.monotonic.receiver_count()
    }
    fn read(&self) -> (u64, i64) {
        let wall = self.wall.load(Ordering::SeqCst);
        let offset = offset_of(wall, *self.monotonic.borrow());
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
    fn steady_ms(&self) -> u64 {
        *self.monotonic.borrow()
    }
    fn judged_now_ms(&self, stamp_ms: u64) -> u64 {
        self.steps.judged_now_ms(self.read().0, stamp_ms)
    }
    fn sleep_ms(&self, ms: u64) -> Sleep {
        let mut monotonic = self.monotonic.subscribe();
        let until_ms = monotonic.borrow_and_update().saturating_add(ms);
        Box::pin(async move {
            // The clock dropped: no time will pass any more, and the wait never ends (as a real one
            // would not end early).
            while *monotonic.borrow_and_update() < until_ms {
                if monotonic.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
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

    #[tokio::test]
    async fn a_sleep_ends_when_the_clock_passes_it_not_before_and_not_by_a_wall_step() {
        let clock = ManualClock::new(1_000_000);
        let sleep = tokio::spawn(clock.sleep_ms(100));
        clock.step_wall_ms(60_000);
        clock.advance_ms(99);
        tokio::task::yield_now().await;
        assert!(!sleep.is_finished(), "99 ms of 100, and a wall step that is no time passing");
        clock.advance_ms(1);
        sleep.await.expect("the sleep ends");
        assert_eq!(clock.sleepers(), 0);
    }

    #[tokio::test]
    async fn within_cuts_a_call_off_at_its_limit() {
        let clock = ManualClock::new(1_000_000);
        assert_eq!(within(&clock, 10, async { 7 }).await, Some(7), "an answer before the limit");
        let cut = {
            let clock = std::sync::Arc::new(ManualClock::new(0));
            let waiting = std::sync::Arc::clone(&clock);
            let call = tokio::spawn(async move { within(&*waiting, 10, std::future::pending::<()>()).await });
            while clock.sleepers() == 0 {
                tokio::task::yield_now().await;
            }
            clock.advance_ms(10);
            call.await.expect("joins")
        };
        assert_eq!(cut, None);
    }
}
