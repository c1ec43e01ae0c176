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

/// Calls of one kind waiting to be sent together. `T` is one call's work.
#[derive(Debug)]
pub struct Group<T> {
    what: &'static str,
    waiting: Mutex<Vec<(T, oneshot::Sender<PortResult<()>>)>>,
    /// Held by the call sending a batch until the batch's results are in.
    turn: tokio::sync::Mutex<()>,
}

impl<T: Send + 'static> Group<T> {
    /// `what`: the engine, as errors name it.
    pub fn new(what: &'static str) -> Group<T> {
        Group { what, waiting: Mutex::new(Vec::new()), turn: tokio::sync::Mutex::new(()) }
    }

    /// Sends `work` with whatever other calls are waiting. `send` gets the batch (this call's work among
    /// it, in arrival order) and answers one result per item, in the same order; it is called only by the
    /// call whose turn it is, so any call's `send` must do the same thing.
    pub async fn send<F, Fut>(&self, work: T, send: F) -> PortResult<()>
    where
        F: FnOnce(Vec<T>) -> Fut,
        Fut: Future<Output = Vec<PortResult<()>>> + Send + 'static,
    {
        let (answer, mut answered) = oneshot::channel();
        self.waiting().push((work, answer));
        // Either an earlier call's batch takes this work along, or this call gets the turn and sends
        // everything waiting, this work included.
        let turn = tokio::select! {
            biased;
            result = &mut answered => return result.unwrap_or_else(|_| Err(self.abandoned())),
            turn = self.turn.lock() => turn,
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
        })
        .await;
        drop(turn);
        answered.await.unwrap_or_else(|_| Err(self.abandoned()))
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Vec<(T, oneshot::Sender<PortResult<()>>)>> {
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

    use super::*;

    /// Calls that arrive while a batch is in flight go together in the next one, and each hears its own
    /// result.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_waiting_behind_a_batch_go_together_and_hear_their_own_result() {
        let group: Arc<Group<u32>> = Arc::new(Group::new("engine"));
        let batches = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let (release, released) = tokio::sync::watch::channel(false);
        let send = |batches: Arc<Mutex<Vec<Vec<u32>>>>, mut released: tokio::sync::watch::Receiver<bool>| {
            move |batch: Vec<u32>| async move {
                batches.lock().expect("lock").push(batch.clone());
                let _ = released.wait_for(|r| *r).await;
                batch
                    .iter()
                    .map(|n| if n % 2 == 0 { Ok(()) } else { Err(PortError::unavailable("engine", n)) })
                    .collect()
            }
        };
        let first = {
            let (group, send) = (Arc::clone(&group), send(Arc::clone(&batches), released.clone()));
            tokio::spawn(async move { group.send(0, send).await })
        };
        while batches.lock().expect("lock").is_empty() {
            tokio::task::yield_now().await;
        }
        let mut later = Vec::new();
        for n in 1..=4 {
            let (group, send) = (Arc::clone(&group), send(Arc::clone(&batches), released.clone()));
            later.push(tokio::spawn(async move { group.send(n, send).await }));
        }
        // Let the four queue up behind the first batch, then let the batches finish.
        while group.waiting().len() < 4 {
            tokio::task::yield_now().await;
        }
        release.send(true).expect("release");
        assert!(first.await.expect("task").is_ok());
        let results: Vec<bool> =
            futures_util::future::join_all(later).await.into_iter().map(|r| r.expect("task").is_ok()).collect();
        assert_eq!(results, vec![false, true, false, true], "odd ones failed, each told its own");
        let batches = batches.lock().expect("lock").clone();
        assert_eq!(batches.len(), 2, "{batches:?}");
        assert_eq!(batches[1].len(), 4, "the four that waited went together: {batches:?}");
    }

    /// Work whose caller stopped waiting before its batch was sent is not sent: the caller was answered
    /// an error (its deadline), and nothing may come of it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_of_a_caller_gone_before_its_batch_is_not_sent() {
        let group: Arc<Group<u32>> = Arc::new(Group::new("engine"));
        let batches = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let (release, released) = tokio::sync::watch::channel(false);
        let send = |batches: Arc<Mutex<Vec<Vec<u32>>>>, mut released: tokio::sync::watch::Receiver<bool>| {
            move |batch: Vec<u32>| async move {
                batches.lock().expect("lock").push(batch.clone());
                let _ = released.wait_for(|r| *r).await;
                batch.iter().map(|_| Ok(())).collect()
            }
        };
        let first = {
            let (group, send) = (Arc::clone(&group), send(Arc::clone(&batches), released.clone()));
            tokio::spawn(async move { group.send(1, send).await })
        };
        while batches.lock().expect("lock").is_empty() {
            tokio::task::yield_now().await;
        }
        let gone = {
            let (group, send) = (Arc::clone(&group), send(Arc::clone(&batches), released.clone()));
            tokio::spawn(async move { group.send(2, send).await })
        };
        while group.waiting().is_empty() {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        release.send(true).expect("release");
        assert!(first.await.expect("task").is_ok());
        assert!(group.send(3, send(Arc::clone(&batches), released.clone())).await.is_ok());
        assert_eq!(*batches.lock().expect("lock"), vec![vec![1], vec![3]], "2 was never sent");
    }

    /// A caller that stops waiting does not take the others' answers with it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_gives_up_does_not_abandon_the_batch() {
        let group: Arc<Group<u32>> = Arc::new(Group::new("engine"));
        let sent = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let started = Arc::new(AtomicUsize::new(0));
        let send = |sent: Arc<AtomicUsize>, mut released: tokio::sync::watch::Receiver<bool>| {
            let started = Arc::clone(&started);
            move |batch: Vec<u32>| async move {
                started.fetch_add(1, Ordering::SeqCst);
                let _ = released.wait_for(|r| *r).await;
                sent.fetch_add(batch.len(), Ordering::SeqCst);
                batch.iter().map(|_| Ok(())).collect()
            }
        };
        let impatient = {
            let (group, send) = (Arc::clone(&group), send(Arc::clone(&sent), released.clone()));
            tokio::spawn(async move { group.send(1, send).await })
        };
        while started.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        impatient.abort();
        let _ = impatient.await;
        release.send(true).expect("release");
        let patient = group.send(2, send(Arc::clone(&sent), released.clone())).await;
        assert!(patient.is_ok());
        assert_eq!(sent.load(Ordering::SeqCst), 2, "the abandoned caller's work was still sent");
    }
}
