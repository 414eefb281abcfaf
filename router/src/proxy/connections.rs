//! A cap on the client connections the router holds open.
//!
//! Pingora's accept loop has no such limit and its connection filter sees accepts but not
//! closes, so the count follows connections through the proxy's own hooks: the first request on
//! a connection takes a permit, a kept-alive connection carries it from request to request, and
//! the permit is returned when the connection's last request context is dropped. A connection is
//! counted from its first request on (Pingora already bounds the wait for a request head); over
//! HTTP/2, each concurrent stream counts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// How many connections may be open at once.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    open: Arc<AtomicUsize>,
    max: usize,
}

/// One open connection's place; the place frees when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct ConnectionPermit {
    _place: Arc<Permit>,
}

#[derive(Debug)]
struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionLimit {
    /// At most `max` open connections.
    pub fn new(max: usize) -> Self {
        Self {
            open: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// A place for a new connection, or `None` when all are taken.
    pub fn try_acquire(&self) -> Option<ConnectionPermit> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .ok()
            .map(|_| ConnectionPermit {
                _place: Arc::new(Permit(self.open.clone())),
            })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_capped_and_freed_with_their_last_clone() {
        let limit = ConnectionLimit::new(2);
        let first = limit.try_acquire().unwrap();
        let second = limit.try_acquire().unwrap();
        assert!(limit.try_acquire().is_none());
        let carried = first.clone();
        drop(first);
        assert!(
            limit.try_acquire().is_none(),
            "a kept-alive connection still holds its place"
        );
        drop(carried);
        assert_eq!(limit.open(), 1);
        assert!(limit.try_acquire().is_some());
        drop(second);
    }
}
