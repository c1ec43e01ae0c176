//! The system's clock: the [`Clock`] port on the OS's wall and monotonic clocks. It tells a step of the
//! wall clock from the passing of time, so deadlines are judged monotonically
//! ([`Clock::judged_now_ms`]), and its sleeps run on tokio's monotonic timer. The one place the OS's
//! clocks are read; tests use `orderly_app::time::ManualClock`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use orderly_app::time::{Clock, Sleep, WallSteps, jump_of, offset_of};

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

    fn steady_ms(&self) -> u64 {
        let (start, _) = *BASELINE.get_or_init(|| (Instant::now(), wall_ms()));
        u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn judged_now_ms(&self, stamp_ms: u64) -> u64 {
        STEPS.judged_now_ms(read_system().0, stamp_ms)
    }

    fn sleep_ms(&self, ms: u64) -> Sleep {
        Box::pin(tokio::time::sleep(Duration::from_millis(ms)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_has_not_jumped_in_a_test() {
        let clock = SystemClock;
        let before = clock.now_ms();
        assert_eq!(clock.jump_ms(), 0);
        assert!(clock.judged_now_ms(before) >= before);
    }

    #[test]
    fn steady_time_moves_forward_with_the_monotonic_clock() {
        let clock = SystemClock;
        let before = clock.steady_ms();
        std::thread::sleep(Duration::from_millis(5));
        assert!(clock.steady_ms() >= before + 5);
    }

    #[tokio::test]
    async fn a_sleep_takes_its_time() {
        let started = Instant::now();
        SystemClock.sleep_ms(20).await;
        assert!(started.elapsed() >= Duration::from_millis(20));
    }
}
