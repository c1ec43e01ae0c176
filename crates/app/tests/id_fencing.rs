//! The id generator's fencing: a worker id taken over by another process stops the old holder.

use std::sync::Arc;

use orderly_app::ids::LeasedSnowflake;
use orderly_app::ports::{IdGen, PortErrorKind};
use orderly_app::time::ManualClock;

/// Two generators on one worker id (the registry gave it to a second process while the first was
/// cut off): the second starts above the first's lease, the first's renewal is refused, and no id
/// is issued twice.
#[tokio::test]
async fn a_worker_id_taken_over_fences_the_old_holder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = orderly_local::open(
        dir.path(),
        Arc::new(ManualClock::new(1_800_000_000_000)),
        &orderly_local::LocalConfig::default(),
        None,
    )
    .await
    .expect("open");
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let old = LeasedSnowflake::start(Arc::clone(&ports.store), clock.clone(), 7, 1_000).await.expect("old");
    let mut issued = std::collections::HashSet::new();
    for _ in 0..100 {
        assert!(issued.insert(old.next_id().await.expect("old issues")));
    }
    let new = LeasedSnowflake::start(Arc::clone(&ports.store), clock.clone(), 7, 1_000).await.expect("new");
    // The old one goes on within its lease, then needs a renewal, which is refused.
    clock.advance_ms(1_500);
    let refused = old.next_id().await.expect_err("fenced");
    assert_eq!(refused.kind, PortErrorKind::Failed, "{refused}");
    old.next_id().await.expect_err("and stays fenced");
    for _ in 0..100 {
        assert!(issued.insert(new.next_id().await.expect("new issues")), "no id twice");
    }
    clock.advance_ms(5_000);
    assert!(issued.insert(new.next_id().await.expect("the new holder renews")));
}

/// A renewal whose caller gave up (the entry's deadline) may still land: the next renewal finds the
/// stored lease is its own earlier attempt, not another holder's, and goes on.
#[tokio::test]
async fn a_renewal_cut_off_after_it_landed_is_not_taken_for_a_takeover() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let ports = orderly_local::open(dir.path(), clock.clone(), &orderly_local::LocalConfig::default(), None)
        .await
        .expect("open");
    let ids = LeasedSnowflake::start(Arc::clone(&ports.store), clock.clone(), 7, 1_000).await.expect("start");
    ids.next_id().await.expect("an id");
    clock.advance_ms(1_500);
    // The renewal is cut off after its write, while it waits for the write to be made durable.
    let mut renewal = Box::pin(ids.next_id());
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(renewal.as_mut().poll(cx))).await;
    assert!(first.is_pending(), "the renewal waits on its sync");
    drop(renewal);
    clock.advance_ms(1_500);
    ids.next_id().await.expect("renewed over its own earlier attempt");
}
