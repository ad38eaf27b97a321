//! Accept loops that cannot starve the master: a cap on the connections a
//! listener holds at once (beyond it, a new one is accepted and closed at
//! once, so it frees its descriptor), and a back-off when accepting fails
//! for want of descriptors or memory, logged once per burst instead of
//! spinning on the error.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The first pause after an accept failed for want of resources.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The longest pause between accepts while resources stay short.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Whether an accept error means "out of descriptors or memory": the
/// listener is fine and a later accept may succeed, but retrying at once
/// only spins.
fn is_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// One listener's accept policy.
pub(crate) struct Gate {
    /// What the listener serves, for the log: "metrics", "control".
    name: &'static str,
    slots: Arc<Semaphore>,
    max: usize,
    /// Accept failures in a row, for the back-off.
    failures: u32,
    /// Whether the current burst of refusals was logged.
    logged_full: bool,
    logged_exhausted: bool,
}

impl Gate {
    /// A gate admitting at most `max` connections at once.
    pub(crate) fn new(name: &'static str, max: usize) -> Gate {
        Gate {
            name,
            slots: Arc::new(Semaphore::new(max)),
            max,
            failures: 0,
            logged_full: false,
            logged_exhausted: false,
        }
    }

    /// Accepts the next connection `accept` yields that fits under the cap,
    /// with the permit that holds its slot until dropped. Connections over
    /// the cap are dropped (closed) at once; accept errors are logged and
    /// waited out.
    pub(crate) async fn admit<S, F, Fut>(&mut self, mut accept: F) -> (S, OwnedSemaphorePermit)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = io::Result<S>>,
    {
        loop {
            match accept().await {
                Ok(stream) => {
                    self.failures = 0;
                    self.logged_exhausted = false;
                    match self.slots.clone().try_acquire_owned() {
                        Ok(permit) => {
                            self.logged_full = false;
                            return (stream, permit);
                        }
                        Err(_) => {
                            if !self.logged_full {
                                self.logged_full = true;
                                tracing::warn!(
                                    event = "connections_refused",
                                    listener = self.name,
                                    "{} listener: {} connections are open, the most it \
                                     holds; closing new ones at once",
                                    self.name,
                                    self.max
                                );
                            }
                            drop(stream);
                        }
                    }
                }
                Err(e) if is_exhaustion(&e) => {
                    if !self.logged_exhausted {
                        self.logged_exhausted = true;
                        tracing::error!(
                            event = "accept_failed",
                            listener = self.name,
                            "{} listener cannot accept: {e}; backing off",
                            self.name
                        );
                    }
                    let wait = crate::time::backoff(BACKOFF_MIN, self.failures, BACKOFF_MAX);
                    self.failures = self.failures.saturating_add(1);
                    tokio::time::sleep(wait).await;
                }
                // A connection reset before it was accepted, and the like.
                Err(e) => tracing::debug!("{} listener: accept failed: {e}", self.name),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_is_told_from_other_errors() {
        assert!(is_exhaustion(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(is_exhaustion(&io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!is_exhaustion(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_and_slots_come_back() {
        let mut gate = Gate::new("test", 2);
        let mut next = 0u32;
        let mut accept = || {
            next += 1;
            let n = next;
            async move { Ok::<u32, io::Error>(n) }
        };
        let (a, pa) = gate.admit(&mut accept).await;
        let (b, _pb) = gate.admit(&mut accept).await;
        assert_eq!((a, b), (1, 2));
        // Full: the third accept is dropped; once a slot frees, the next
        // one is admitted.
        drop(pa);
        let (c, _pc) = gate.admit(&mut accept).await;
        assert_eq!(c, 3);
        let mut tries = 0;
        let full = tokio::time::timeout(
            Duration::from_millis(50),
            gate.admit(|| {
                tries += 1;
                async {
                    tokio::task::yield_now().await;
                    Ok::<u32, io::Error>(0)
                }
            }),
        )
        .await;
        assert!(full.is_err(), "nothing is admitted while full");
        assert!(tries > 0, "connections were accepted and closed meanwhile");
    }

    #[tokio::test]
    async fn exhaustion_backs_off_instead_of_spinning() {
        let mut gate = Gate::new("test", 1);
        let mut calls = 0u32;
        let start = tokio::time::Instant::now();
        let (s, _p) = gate
            .admit(|| {
                calls += 1;
                let n = calls;
                async move {
                    if n < 5 {
                        Err(io::Error::from_raw_os_error(libc::EMFILE))
                    } else {
                        Ok(n)
                    }
                }
            })
            .await;
        assert_eq!(s, 5);
        // At least 10 + 20 + 40 + 80 ms of pauses between the tries.
        assert!(start.elapsed() >= Duration::from_millis(150));
    }
}
