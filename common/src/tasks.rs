//! Starting and stopping work: the one shutdown mechanism of both binaries.
//!
//! A [`Stage`] is a group of tasks and threads that start together and stop together:
//! a [`CancellationToken`] tells them to stop, a [`TaskTracker`] knows when the last
//! one has. Threads (the store writer, the alert engine, the lifecycle, file sources)
//! are tracked like tasks, so stopping a stage is one `await` whatever it runs, and
//! never blocks a runtime thread on a `join`.
//!
//! A binary stops in stages, in the order data flows: what accepts work first (so
//! nothing new arrives), then what processes it, then what stores it. A stage made
//! with [`Stage::child_of`] is also stopped by its parent's token (a SIGTERM
//! cancels the root); the order of stopping is still each stage's own
//! [`Stage::stop`], called in turn.

use std::future::Future;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Tasks and threads that stop together.
#[derive(Clone, Debug)]
pub struct Stage {
    name: &'static str,
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Stage {
    /// A stage of its own, stopped only by [`Stage::stop`] (or its token).
    pub fn new(name: &'static str) -> Stage {
        Stage::with_token(name, CancellationToken::new())
    }

    /// A stage that also stops when `parent` is cancelled.
    pub fn child_of(name: &'static str, parent: &CancellationToken) -> Stage {
        Stage::with_token(name, parent.child_token())
    }

    fn with_token(name: &'static str, token: CancellationToken) -> Stage {
        Stage {
            name,
            token,
            tracker: TaskTracker::new(),
        }
    }

    /// The token the stage's work watches (cancelled when the stage stops).
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Whether the stage was told to stop.
    pub fn is_stopping(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Runs `fut` on the runtime as part of the stage.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(fut)
    }

    /// Runs `f` on a named OS thread as part of the stage; `f` gets the stage's token
    /// and must return soon after it is cancelled. What it returns can be awaited on
    /// the receiver (an error there means the thread panicked).
    ///
    /// # Errors
    /// When the thread cannot be created.
    pub fn spawn_thread<T, F>(&self, name: &str, f: F) -> std::io::Result<oneshot::Receiver<T>>
    where
        T: Send + 'static,
        F: FnOnce(CancellationToken) -> T + Send + 'static,
    {
        let held = self.tracker.token();
        let token = self.token.clone();
        let (tx, rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                // Dropped when the thread ends, however it ends (a panic too).
                let _held = held;
                let _ = tx.send(f(token));
            })
            .map(|_| rx)
    }

    /// Tells the stage to stop and waits up to `within` for all its work to end.
    /// Returns whether everything ended in time (what did not is left running and
    /// named in the log).
    pub async fn stop(&self, within: Duration) -> bool {
        self.token.cancel();
        self.wait(within).await
    }

    /// Waits up to `within` for the stage's work to end on its own (no new work can
    /// join it afterwards).
    pub async fn wait(&self, within: Duration) -> bool {
        self.tracker.close();
        let done = tokio::time::timeout(within, self.tracker.wait())
            .await
            .is_ok();
        if !done {
            tracing::warn!(
                stage = self.name,
                left = self.tracker.len(),
                "work still running after {within:?}; not waiting for it"
            );
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn stop_waits_for_tasks_and_threads() {
        let stage = Stage::new("test");
        let ended = Arc::new(AtomicUsize::new(0));
        let e = ended.clone();
        let token = stage.token();
        let e2 = e.clone();
        stage.spawn(async move {
            token.cancelled().await;
            e2.fetch_add(1, Ordering::SeqCst);
        });
        stage
            .spawn_thread("test-thread", move |token| {
                while !token.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                std::thread::sleep(Duration::from_millis(50));
                e.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
        assert!(stage.stop(Duration::from_secs(10)).await);
        assert_eq!(ended.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_child_stops_with_its_parent_and_not_the_other_way() {
        let root = CancellationToken::new();
        let a = Stage::child_of("a", &root);
        let b = Stage::child_of("b", &root);
        assert!(a.stop(Duration::from_secs(1)).await);
        assert!(!b.is_stopping() && !root.is_cancelled());
        root.cancel();
        assert!(b.is_stopping());
    }

    #[tokio::test]
    async fn stop_gives_up_on_work_that_ignores_it() {
        let stage = Stage::new("stuck");
        stage.spawn(std::future::pending::<()>());
        assert!(!stage.stop(Duration::from_millis(50)).await);
    }
}
