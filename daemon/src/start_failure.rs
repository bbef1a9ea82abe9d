//! Pipelines that did not start: a file that does not plan, state that does not open (damage, a
//! wrong key), a table file that is missing. Such a pipeline is held with its error, shown by the
//! API, the metrics and `STATUS=`, and tried again with a growing delay, while the gateway's other
//! pipelines and its management API run on: one bad file must never keep a gateway down, nor
//! out of reach of the remote commands that could repair it.
//!
//! Owns the bookkeeping and the retry schedule only; never plans, starts or touches state itself.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The state a held pipeline is shown in (API, metrics). Not `failed`: that is a worker that
/// stopped on an error, which stops eddyd (fail-stop); a held pipeline never ran.
pub const START_FAILED: &str = "start-failed";

/// Delay before the first retry; each further one doubles it, up to [`MAX_RETRY_DELAY`].
pub const FIRST_RETRY_DELAY: Duration = Duration::from_secs(10);
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// One held pipeline.
pub struct StartFailure {
    pub file: PathBuf,
    pub origin: String,
    /// Its SQL as last read (`None` when the file could not be read).
    pub sql: Option<String>,
    /// The error of the last attempt, whole chain.
    pub error: String,
    /// Attempts so far since it was first held (or since a reload, which starts over).
    pub attempts: u32,
    pub retry_at: Instant,
}

/// How long to wait after the `attempts`-th failed attempt (1 = the first).
pub fn retry_delay(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    FIRST_RETRY_DELAY.saturating_mul(1 << doublings).min(MAX_RETRY_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_from_the_first_up_to_the_most() {
        let d: Vec<u64> = (1..=7).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(d, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(retry_delay(0), FIRST_RETRY_DELAY);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY_DELAY);
    }
}
