//! [`Group`]: concurrent calls sent to an engine together — group commit. An adapter whose engine pays
//! per call (a broker per stored and confirmed message, a database per statement and commit) hands each
//! call's work to its `Group`; one call at a time sends everything waiting as one batch, and each call is
//! answered by its own part of the batch's result. Under load a batch carries many calls; alone, a call
//! is a batch of one and waits for nothing else.
//!
//! One batch is in flight at a time: the calls that arrive meanwhile make the next one. The batch runs
//! in a task of its own, so a caller that gives up waiting (a timeout) does not abandon the others; the
//! work of a caller that gave up before its batch was sent is dropped, not sent (it was answered an
//! error). Work already sent may still land after its caller gave up: callers treat an error as "maybe
//! done", as they would for one call cut off by a deadline.

use std::future::Future;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::ports::{PortError, PortResult};

/// Calls of one kind waiting to be sent together. `T` is one call's work, `R` what it is answered (a
/// read's rows; nothing for a write).
#[derive(Debug)]
pub struct Group<T, R = ()> {
    what: &'static str,
    waiting: Mutex<Vec<(T, oneshot::Sender<PortResult<R>>)>>,
    /// Held by the batch being sent until its results are in — by the task sending it, so a caller that
    /// stops waiting does not let the next batch start beside it.
    turn: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl<T: Send + 'static, R: Send + 'static> Group<T, R> {
    /// `what`: the engine, as errors name it.
    pub fn new(what: &'static str) -> Group<T, R> {
        Group { what, waiting: Mutex::new(Vec::new()), turn: std::sync::Arc::default() }
    }

    /// Sends `work` with whatever other calls are waiting. `send` gets the batch (this call's work among
    /// it, in arrival order) and answers one result per item, in the same order; it is called only by the
    /// call whose turn it is, so any call's `send` must do the same thing.
    pub async fn send<F, Fut>(&self, work: T, send: F) -> PortResult<R>
    where
        F: FnOnce(Vec<T>) -> Fut,
        Fut: Future<Output = Vec<PortResult<R>>> + Send + 'static,
    {
        let (answer, mut answered) = oneshot::channel();
        self.waiting().push((work, answer));
        // Either an earlier call's batch takes this work along, or this call gets the turn and sends
        // everything waiting, this work included.
        let turn = tokio::select! {
            biased;
            result = &mut answered => return result.unwrap_or_else(|_| Err(self.abandoned())),
            turn = std::sync::Arc::clone(&self.turn).lock_owned() => turn,
        };
        match answered.try_recv() {
            Ok(result) => return result,
            Err(oneshot::error::TryRecvError::Closed) => return Err(self.abandoned()),
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        // The work of a caller that stopped waiting (its deadline passed) is not sent: it was answered an
        // error, and nothing may come of it.
        let (batch, answers): (Vec<T>, Vec<_>) =
            std::mem::take(&mut *self.waiting()).into_iter().filter(|(_, answer)| !answer.is_closed()).unzip();
        let sending = send(batch);
        let _ = tokio::spawn(async move {
            let results = sending.await;
            for (answer, result) in answers.into_iter().zip(results) {
                // A caller that gave up waiting is not there to hear.
                let _ = answer.send(result);
            }
            drop(turn);
        })
        .await;
        answered.await.unwrap_or_else(|_| Err(self.abandoned()))
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Vec<(T, oneshot::Sender<PortResult<R>>)>> {
        self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn abandoned(&self) -> PortError {
        PortError::unavailable(self.what, "the batch carrying this call ended without an answer for it")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::future::BoxFuture;

    use super::*;

    /// An engine for the tests: it records each batch as it starts, holds it until released, counts the
    /// work of the batches it finished, and fails the odd items when asked to.
    struct Engine {
        started: Mutex<Vec<Vec<u32>>>,
        finished: AtomicUsize,
        released: tokio::sync::watch::Receiver<bool>,
        fail_odd: bool,
    }

    impl Engine {
        fn new(fail_odd: bool) -> (Arc<Engine>, tokio::sync::watch::Sender<bool>) {
            let (release, released) = tokio::sync::watch::channel(false);
            let engine = Engine { started: Mutex::default(), finished: AtomicUsize::new(0), released, fail_odd };
            (Arc::new(engine), release)
        }

        /// What a caller hands [`Group::send`].
        fn sender(self: &Arc<Self>) -> impl FnOnce(Vec<u32>) -> BoxFuture<'static, Vec<PortResult<()>>> + use<> {
            let engine = Arc::clone(self);
            move |batch| {
                Box::pin(async move {
                    engine.started.lock().expect("lock").push(batch.clone());
                    let _ = engine.released.clone().wait_for(|r| *r).await;
                    engine.finished.fetch_add(batch.len(), Ordering::SeqCst);
                    let fails = |n: &u32| engine.fail_odd && n % 2 == 1;
                    batch
                        .iter()
                        .map(|n| if fails(n) { Err(PortError::unavailable("engine", n)) } else { Ok(()) })
                        .collect()
                })
            }
        }

        fn started(&self) -> Vec<Vec<u32>> {
            self.started.lock().expect("lock").clone()
        }

        fn spawn_call(self: &Arc<Self>, group: &Arc<Group<u32>>, n: u32) -> tokio::task::JoinHandle<PortResult<()>> {
            let (group, send) = (Arc::clone(group), self.sender());
            tokio::spawn(async move { group.send(n, send).await })
        }

        async fn until_started(&self) {
            while self.started.lock().expect("lock").is_empty() {
                tokio::task::yield_now().await;
            }
        }
    }

    /// Calls that arrive while a batch is in flight go together in the next one, and each hears its own
    /// result.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_waiting_behind_a_batch_go_together_and_hear_their_own_result() {
        let group: Arc<Group<u32>> = Arc::new(Group::new("engine"));
        let (engine, release) = Engine::new(true);
        let first = engine.spawn_call(&group, 0);
        engine.until_started().await;
        let later: Vec<_> = (1..=4).map(|n| engine.spawn_call(&group, n)).collect();
        // Let the four queue up behind the first batch, then let the batches finish.
        while group.waiting().len() < 4 {
            tokio::task::yield_now().await;
        }
        release.send(true).expect("release");
        assert!(first.await.expect("task").is_ok());
        let results: Vec<bool> =
            futures_util::future::join_all(later).await.into_iter().map(|r| r.expect("task").is_ok()).collect();
        assert_eq!(results, vec![false, true, false, true], "odd ones failed, each told its own");
        let batches = engine.started();
        assert_eq!(batches.len(), 2, "{batches:?}");
        assert_eq!(batches[1].len(), 4, "the four that waited went together: {batches:?}");
    }

    /// Work whose caller stopped waiting before its batch was sent is not sent: the caller was answered
    /// an error (its deadline), and nothing may come of it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_of_a_caller_gone_before_its_batch_is_not_sent() {
        let group: Arc<Group<u32>> = Arc::new(Group::new("engine"));
        let (engine, release) = Engine::new(false);
        let first = engine.spawn_call(&group, 1);
        engine.until_started().await;
        let gone = engine.spawn_call(&group, 2);
        while group.waiting().is_empty() {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        release.send(true).expect("release");
        assert!(first.await.expect("task").is_ok());
        assert!(group.send(3, engine.sender()).await.is_ok());
        assert_eq!(engine.started(), vec![vec![1], vec![3]], "2 was never sent");
    }

    /// A caller that stops waiting does not take the others' answers with it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_gives_up_does_not_abandon_the_batch() {
        let group: Arc<Group<u32>> = Arc::new(Group::new("engine"));
        let (engine, release) = Engine::new(false);
        let impatient = engine.spawn_call(&group, 1);
        engine.until_started().await;
        impatient.abort();
        let _ = impatient.await;
        release.send(true).expect("release");
        let patient = group.send(2, engine.sender()).await;
        assert!(patient.is_ok());
        assert_eq!(engine.finished.load(Ordering::SeqCst), 2, "the abandoned caller's work was still sent");
    }
}
