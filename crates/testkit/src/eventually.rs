//! Polling assertions: wait for a condition with a deadline rather than sleeping.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

/// How long [`eventually!`](crate::eventually) waits before failing, unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a condition is re-evaluated. Short enough that tests do not linger, long enough
/// that a busy 2-core CI machine is not spun by the poller itself.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Evaluates `probe` until it returns `Some`, or panics after `timeout` with the last value the
/// `describe` closure produced. Prefer the [`eventually!`](crate::eventually) macro.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Box<dyn Debug + Send>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("condition `{what}` did not hold within {timeout:?}; last observed: {last:?}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until an async boolean expression holds.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let ready = std::sync::atomic::AtomicBool::new(true);
/// ambit_testkit::eventually!(ready.load(std::sync::atomic::Ordering::SeqCst));
/// // With an explicit timeout and an observed value printed on failure:
/// ambit_testkit::eventually!(timeout = std::time::Duration::from_secs(1), observe = 41 + 1, |v| v == 42);
/// # }
/// ```
#[macro_export]
macro_rules! eventually {
    (timeout = $timeout:expr, observe = $observe:expr, |$v:ident| $cond:expr) => {
        $crate::poll_until(stringify!($cond), $timeout, || async {
            let $v = $observe;
            if $cond {
                Ok(())
            } else {
                Err(Box::new(format!("{:?}", $v)) as Box<dyn ::std::fmt::Debug + Send>)
            }
        })
        .await
    };
    (observe = $observe:expr, |$v:ident| $cond:expr) => {
        $crate::eventually!(
            timeout = $crate::DEFAULT_TIMEOUT,
            observe = $observe,
            |$v| $cond
        )
    };
    (timeout = $timeout:expr, $cond:expr) => {
        $crate::eventually!(timeout = $timeout, observe = $cond, |ok| ok)
    };
    ($cond:expr) => {
        $crate::eventually!(timeout = $crate::DEFAULT_TIMEOUT, $cond)
    };
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn waits_for_a_condition_that_becomes_true() {
        let calls = Arc::new(AtomicUsize::new(0));
        crate::eventually!(observe = calls.fetch_add(1, Ordering::SeqCst), |n| n >= 3);
        assert!(calls.load(Ordering::SeqCst) >= 4);
    }

    #[tokio::test]
    #[should_panic(expected = "last observed: \"7\"")]
    async fn fails_with_the_last_observed_value() {
        crate::eventually!(timeout = Duration::from_millis(60), observe = 7, |v| v == 8);
    }
}
