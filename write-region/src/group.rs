//! Group commit for the store requests that every command makes: what many commands ask at the
//! same time goes to the store as one request.
//!
//! The store's cost on the write path is mostly per request, not per row: parsing, scheduling and
//! answering a one-row write costs it about as much as the write itself. Under load dozens of
//! commands each want the same kind of small request at once (an outbox marker, the instrument's
//! current price). A [`Group`] queues them; whenever fewer than `in_flight` of its batches are
//! with the store, it takes everything queued (up to `max_batch`) as the next batch. An idle
//! group sends a request at once, so grouping costs a caller nothing when there is nothing to
//! group with, and at most the wait for a free slot when there is.
//!
//! Work off the latency path (deleting markers once their events are published) can wait for
//! company instead: a group started with a `linger` holds each batch open that long, so at a
//! steady trickle of callers one request serves all that arrive in the window rather than one.
//!
//! A batch is formed only from requests already queued when it starts, so a read served by a
//! group started after its caller asked: it sees every commit that finished before the call,
//! exactly as a read of the caller's own would.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::store::StoreError;

type Reply<O> = oneshot::Sender<Result<O, Arc<StoreError>>>;

/// Requests of one kind, served in batches by `run` (see the module documentation).
pub struct Group<I, O> {
    requests: mpsc::UnboundedSender<(I, Reply<O>)>,
}

impl<I: Send + 'static, O: Send + 'static> Group<I, O> {
    /// Starts the group's task; it ends when the group is dropped. `run` serves one batch and
    /// answers one output per input, in the inputs' order; its failure fails every caller of
    /// the batch.
    pub fn start<F, Fut>(max_batch: usize, in_flight: usize, run: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<O>, StoreError>> + Send + 'static,
    {
        Self::lingering(max_batch, in_flight, Duration::ZERO, run)
    }

    /// Like [`Group::start`], but a batch waits `linger` after its first request for others to
    /// join (only for callers that do not wait on the answer to go on).
    pub fn lingering<F, Fut>(max_batch: usize, in_flight: usize, linger: Duration, run: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<O>, StoreError>> + Send + 'static,
    {
        let (requests, mut queued) = mpsc::unbounded_channel::<(I, Reply<O>)>();
        let run = Arc::new(run);
        let slots = Arc::new(Semaphore::new(in_flight.max(1)));
        tokio::spawn(async move {
            while let Some(first) = queued.recv().await {
                // A free slot first: what arrives while every slot is busy joins this batch.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                if !linger.is_zero() {
                    tokio::time::sleep(linger).await;
                }
                let mut batch = vec![first];
                while batch.len() < max_batch
                    && let Ok(next) = queued.try_recv()
                {
                    batch.push(next);
                }
                let (inputs, replies): (Vec<I>, Vec<Reply<O>>) = batch.into_iter().unzip();
                let served = run(inputs);
                tokio::spawn(async move {
                    let result = served.await;
                    drop(slot);
                    answer(replies, result);
                });
            }
        });
        Self { requests }
    }

    /// Queues `input` for the next batch and waits for its output.
    pub async fn call(&self, input: I) -> Result<O, StoreError> {
        let (reply, answered) = oneshot::channel();
        self.requests
            .send((input, reply))
            .map_err(|_| StoreError::GroupStopped)?;
        answered
            .await
            .map_err(|_| StoreError::GroupStopped)?
            .map_err(StoreError::Grouped)
    }
}

fn answer<O>(replies: Vec<Reply<O>>, result: Result<Vec<O>, StoreError>) {
    match result {
        Ok(outputs) if outputs.len() == replies.len() => {
            for (reply, output) in replies.into_iter().zip(outputs) {
                // A caller that gave up (its request was cancelled) needs no answer.
                let _ = reply.send(Ok(output));
            }
        }
        Ok(outputs) => fail(
            replies,
            StoreError::Conditional(format!("a batch answered {} outputs", outputs.len())),
        ),
        Err(error) => fail(replies, error),
    }
}

fn fail<O>(replies: Vec<Reply<O>>, error: StoreError) {
    let error = Arc::new(error);
    for reply in replies {
        let _ = reply.send(Err(error.clone()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[tokio::test]
    async fn callers_queued_while_a_batch_is_out_share_the_next() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let (release, released) = tokio::sync::watch::channel(false);
        let seen = batches.clone();
        let group = Arc::new(Group::start(64, 1, move |inputs: Vec<u32>| {
            seen.lock().map(|mut seen| seen.push(inputs.clone())).ok();
            let mut released = released.clone();
            async move {
                // The first batch waits until the others are queued behind it.
                if inputs == [0] {
                    released.wait_for(|go| *go).await.ok();
                }
                Ok(inputs.iter().map(|input| input * 10).collect())
            }
        }));
        let first = tokio::spawn({
            let group = group.clone();
            async move { group.call(0).await.ok() }
        });
        while batches.lock().map(|seen| seen.len()).unwrap_or(0) == 0 {
            tokio::task::yield_now().await;
        }
        let rest: Vec<_> = (1..=5)
            .map(|input| {
                let group = group.clone();
                tokio::spawn(async move { group.call(input).await.ok() })
            })
            .collect();
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        release.send(true).ok();
        assert_eq!(first.await.ok().flatten(), Some(0));
        for (input, caller) in (1..=5).zip(rest) {
            assert_eq!(caller.await.ok().flatten(), Some(input * 10));
        }
        let seen = batches.lock().map(|seen| seen.clone()).unwrap_or_default();
        assert_eq!(seen, vec![vec![0], vec![1, 2, 3, 4, 5]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lingering_group_gathers_callers_arriving_within_its_window() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let seen = batches.clone();
        let group = Arc::new(Group::lingering(
            64,
            1,
            Duration::from_millis(20),
            move |inputs: Vec<u32>| {
                seen.lock().map(|mut seen| seen.push(inputs.clone())).ok();
                async move { Ok(inputs) }
            },
        ));
        let callers: Vec<_> = (0..3)
            .map(|input| {
                let group = group.clone();
                tokio::spawn(async move {
                    // Callers 12 ms apart: the first two inside one window, the third after it.
                    tokio::time::sleep(Duration::from_millis(5 + 12 * u64::from(input))).await;
                    group.call(input).await.ok()
                })
            })
            .collect();
        for (input, caller) in (0..3).zip(callers) {
            assert_eq!(caller.await.ok().flatten(), Some(input));
        }
        let seen = batches.lock().map(|seen| seen.clone()).unwrap_or_default();
        assert_eq!(seen, vec![vec![0, 1], vec![2]]);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_callers() {
        let group = Group::start(8, 2, |_: Vec<u32>| async {
            Err::<Vec<u32>, _>(StoreError::EmptyAppend)
        });
        let error = group.call(1).await.err();
        assert!(matches!(
            error,
            Some(StoreError::Grouped(cause)) if matches!(*cause, StoreError::EmptyAppend)
        ));
    }
}
