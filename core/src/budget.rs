//! Budgets of request bytes a server holds at once: a large argument is granted (and then
//! sent and read) only once the budget has room for it, so many large calls at once wait
//! their turn, their senders holding their arguments back, instead of filling the machine's
//! memory.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes are counted in units of this size (so that a budget of many GiB fits a semaphore).
const UNIT: u64 = 1 << 10;

/// A budget of bytes, shared by the calls that draw on it.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    units: Arc<Semaphore>,
    total: u32,
}

/// Bytes drawn from a budget, returned when dropped.
#[derive(Debug)]
pub(crate) struct Drawn {
    _units: Option<OwnedSemaphorePermit>,
}

impl Budget {
    /// A budget of `bytes` (at least one unit).
    pub(crate) fn new(bytes: u64) -> Self {
        let total = bytes
            .div_ceil(UNIT)
            .clamp(1, Semaphore::MAX_PERMITS as u64)
            .min(u64::from(u32::MAX)) as u32;
        Self {
            units: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Waits until the budget has room for `bytes`, and draws them. A draw larger than the
    /// whole budget takes all of it (such a call runs alone rather than never).
    pub(crate) async fn draw(&self, bytes: u64) -> Drawn {
        let units = bytes.div_ceil(UNIT).min(u64::from(self.total)) as u32;
        if units == 0 {
            return Drawn { _units: None };
        }
        // The semaphore is never closed: acquiring fails only if it were.
        Drawn {
            _units: self.units.clone().acquire_many_owned(units).await.ok(),
        }
    }

    /// Bytes free now.
    #[cfg(test)]
    fn free(&self) -> u64 {
        self.units.available_permits() as u64 * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn draws_wait_for_room_and_an_oversized_draw_takes_it_all() {
        let budget = Budget::new(10 * UNIT);
        let first = budget.draw(6 * UNIT).await;
        assert_eq!(budget.free(), 4 * UNIT);
        // 6 more do not fit until the first returns.
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.draw(6 * UNIT).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished(), "a draw went past the budget");
        drop(first);
        let second = waiting.await.ok();
        assert!(second.is_some());
        drop(second);
        // Larger than the budget: takes all of it, once all of it is free.
        let all = budget.draw(100 * UNIT).await;
        assert_eq!(budget.free(), 0);
        drop(all);
        assert_eq!(budget.free(), 10 * UNIT);
        // Nothing drawn for nothing.
        let _none = budget.draw(0).await;
        assert_eq!(budget.free(), 10 * UNIT);
    }
}
