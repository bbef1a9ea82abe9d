//! Reconnect delays for every connector: 100 ms doubling to 30 s, reset by a successful connect,
//! slept in short steps so a stopping daemon is never held up by a long delay.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const FIRST: Duration = Duration::from_millis(100);
const MAX: Duration = Duration::from_secs(30);

pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff(FIRST)
    }

    pub(crate) fn reset(&mut self) {
        self.0 = FIRST;
    }

    /// The delay the next failure waits, and doubles it (up to 30 s).
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(MAX);
        d
    }

    /// Sleeps the current delay in short steps, returning early once `stop` is set.
    pub(crate) fn sleep(&mut self, stop: &AtomicBool) {
        self.sleep_unless(|| stop.load(Ordering::Acquire))
    }

    /// Sleeps the current delay in short steps, returning early once `stop()` says so.
    pub(crate) fn sleep_unless(&mut self, stop: impl Fn() -> bool) {
        let until = Instant::now() + self.next_delay();
        while Instant::now() < until && !stop() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new();
        let d: Vec<_> = (0..12).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(&d[..4], &[100, 200, 400, 800]);
        assert_eq!(*d.last().unwrap(), 30_000);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }
}
