//! Deadlines: instants a duration after another, saturating (durations from users and from the
//! wire can be arbitrarily long, and `Instant + Duration` panics past the clock's range), and
//! [`Bounded`], work raced against a deadline and a stop signal.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::task::Unconstrained;
use tokio::time::{Instant, Sleep};

/// About 30 years: later than any deadline that matters, and within every clock's range.
const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `d` after `from`, or about 30 years after it when `d` is longer.
pub fn saturating_after(from: Instant, d: Duration) -> Instant {
    from.checked_add(d.min(FAR))
        .or_else(|| from.checked_add(Duration::from_secs(24 * 3600)))
        .unwrap_or(from)
}

/// `d` from now, saturating as [`saturating_after`].
pub fn from_now(d: Duration) -> Instant {
    saturating_after(Instant::now(), d)
}

/// How [`Bounded`] work ended.
#[derive(Debug)]
pub(crate) enum Bound<T> {
    /// The work finished with this.
    Done(T),
    /// The deadline passed first.
    Expired,
    /// The stop signal came first.
    Stopped,
}

pin_project_lite::pin_project! {
    /// `work` raced against an optional deadline and an optional stop signal (the stop first,
    /// then the work, then the deadline, at each wake-up: work that finishes as the deadline
    /// passes is taken; stopped work is not started). Written by hand rather than with
    /// `select!` over async blocks, which would store the work twice in every call's future.
    pub(crate) struct Bounded<F, S> {
        #[pin]
        work: F,
        // Unconstrained: work that spends the task's whole cooperative budget on every poll
        // must not keep its deadline from firing (as `tokio::time::timeout` ensures too).
        #[pin]
        deadline: Option<Unconstrained<Sleep>>,
        #[pin]
        stop: Option<S>,
    }
}

impl<F: Future, S: Future> Bounded<F, S> {
    /// `work`, ended at `deadline` or when `stop` completes (never without them).
    pub(crate) fn new(work: F, deadline: Option<Instant>, stop: Option<S>) -> Self {
        Self {
            work,
            deadline: deadline.map(|d| tokio::task::unconstrained(tokio::time::sleep_until(d))),
            stop,
        }
    }
}

impl<F: Future, S: Future> Future for Bounded<F, S> {
    type Output = Bound<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(stop) = this.stop.as_pin_mut() {
            if stop.poll(cx).is_ready() {
                return Poll::Ready(Bound::Stopped);
            }
        }
        if let Poll::Ready(done) = this.work.poll(cx) {
            return Poll::Ready(Bound::Done(done));
        }
        match this.deadline.as_pin_mut().map(|d| d.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Bound::Expired),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_duration_gives_an_instant_without_panicking() {
        let now = Instant::now();
        assert_eq!(
            saturating_after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert!(saturating_after(now, Duration::MAX) > now + Duration::from_secs(365 * 24 * 3600));
        assert!(from_now(Duration::from_micros(u64::MAX)) > now);
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_work_ends_with_the_first_of_work_deadline_and_stop() {
        let now = Instant::now();
        let second = Duration::from_secs(1);
        let sleep = |d| tokio::time::sleep(d);
        let done = Bounded::new(
            sleep(second),
            Some(now + 2 * second),
            Some(sleep(3 * second)),
        );
        assert!(matches!(done.await, Bound::Done(())));
        assert_eq!(now.elapsed(), second);
        let now = Instant::now();
        let expired = Bounded::new(
            sleep(3 * second),
            Some(now + second),
            Some(sleep(2 * second)),
        );
        assert!(matches!(expired.await, Bound::Expired));
        assert_eq!(now.elapsed(), second);
        let now = Instant::now();
        let stopped = Bounded::new(
            sleep(3 * second),
            Some(now + 2 * second),
            Some(sleep(second)),
        );
        assert!(matches!(stopped.await, Bound::Stopped));
        assert_eq!(now.elapsed(), second);
        let unbounded = Bounded::<_, std::future::Pending<()>>::new(sleep(second), None, None);
        assert!(matches!(unbounded.await, Bound::Done(())));
        // A stop that came before the work started: the work is not polled.
        let polled = std::sync::atomic::AtomicBool::new(false);
        let work = async { polled.store(true, std::sync::atomic::Ordering::Relaxed) };
        let stopped = Bounded::new(work, None, Some(std::future::ready(())));
        assert!(matches!(stopped.await, Bound::Stopped));
        assert!(!polled.load(std::sync::atomic::Ordering::Relaxed));
    }

    #[tokio::test]
    async fn work_that_spends_its_whole_budget_on_every_poll_still_meets_its_deadline() {
        let busy = async {
            loop {
                tokio::task::consume_budget().await;
            }
        };
        let deadline = Instant::now() + Duration::from_millis(20);
        let bounded = Bounded::<_, std::future::Pending<()>>::new(busy, Some(deadline), None);
        let ended = tokio::time::timeout(Duration::from_secs(10), bounded).await;
        assert!(matches!(ended, Ok(Bound::Expired)), "{ended:?}");
    }
}
