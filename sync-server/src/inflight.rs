//! Exchanges in flight, from a request read to its reply acknowledged by the device.
//!
//! When the committer hits a storage failure only a restart mends, the server stops at once;
//! the rounds caught in that commit must still get their storage error (retry) rather than the
//! endpoint's "server shutting down". [`Inflight::drained`] lets the stop wait, bounded, until
//! every reply in flight has reached its device.

use std::time::Duration;

use tokio::sync::watch;

/// Counts exchanges in flight.
#[derive(Debug)]
pub struct Inflight {
    count: watch::Sender<usize>,
}

impl Default for Inflight {
    fn default() -> Self {
        Inflight {
            count: watch::Sender::new(0),
        }
    }
}

impl Inflight {
    /// Counts one exchange until the returned guard is dropped.
    pub fn enter(&self) -> Exchange {
        self.count.send_modify(|n| *n += 1);
        Exchange(self.count.clone())
    }

    /// Exchanges in flight now.
    pub fn count(&self) -> usize {
        *self.count.borrow()
    }

    /// Waits until no exchange is in flight, at most `within`; whether that happened.
    pub async fn drained(&self, within: Duration) -> bool {
        let mut rx = self.count.subscribe();
        let done = tokio::time::timeout(within, rx.wait_for(|n| *n == 0)).await;
        matches!(done, Ok(Ok(_)))
    }
}

/// One exchange in flight; dropping it ends it.
#[derive(Debug)]
pub struct Exchange(watch::Sender<usize>);

impl Drop for Exchange {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wait ends when the last exchange does, and not before; it gives up at its bound.
    #[tokio::test(start_paused = true)]
    async fn drained_waits_for_the_last_exchange_within_its_bound() {
        let inflight = std::sync::Arc::new(Inflight::default());
        assert!(inflight.drained(Duration::from_secs(1)).await, "idle");
        let (a, b) = (inflight.enter(), inflight.enter());
        assert_eq!(inflight.count(), 2);
        let waiter = {
            let inflight = inflight.clone();
            tokio::spawn(async move { inflight.drained(Duration::from_secs(10)).await })
        };
        drop(a);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished(), "one exchange is still in flight");
        drop(b);
        assert!(
            waiter.await.unwrap_or(false),
            "drained once the last one ended"
        );
        let _stuck = inflight.enter();
        assert!(!inflight.drained(Duration::from_secs(3)).await, "bounded");
    }
}
