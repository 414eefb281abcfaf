//! Background tasks that live exactly as long as the value owning them.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::{JoinError, JoinHandle};

/// A spawned task that ends when this handle is dropped: the watch, poller or server owning it
/// stops with its owner instead of running on detached. Awaiting it waits for the task's end,
/// as awaiting a [`JoinHandle`] does.
#[derive(Debug)]
pub struct AbortOnDrop<T>(JoinHandle<T>);

impl<T: Send + 'static> AbortOnDrop<T> {
    /// Spawns `task` on the current Tokio runtime.
    pub fn spawn(task: impl Future<Output = T> + Send + 'static) -> Self {
        Self(tokio::spawn(task))
    }
}

impl<T> AbortOnDrop<T> {
    /// Whether the task has ended (returned, panicked or been aborted).
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

/// Takes ownership of a task spawned elsewhere (on another runtime's handle, say).
impl<T> From<JoinHandle<T>> for AbortOnDrop<T> {
    fn from(handle: JoinHandle<T>) -> Self {
        Self(handle)
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;

    #[tokio::test]
    async fn dropping_the_handle_ends_the_task() {
        let (ended_tx, ended) = oneshot::channel::<()>();
        let task = AbortOnDrop::spawn(async move {
            // Dropped, and so sending, only when the task ends.
            let _ended = ended_tx;
            std::future::pending::<()>().await;
        });
        assert!(!task.is_finished());
        drop(task);
        tokio::time::timeout(Duration::from_secs(5), ended)
            .await
            .expect("the task ended")
            .expect_err("by being aborted, not by finishing");
    }

    #[tokio::test]
    async fn awaiting_the_handle_gives_the_tasks_result() {
        let mut task = AbortOnDrop::spawn(async { 42 });
        assert_eq!((&mut task).await.unwrap(), 42);
        assert!(task.is_finished());
    }
}
