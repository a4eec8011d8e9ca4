//! The outcomes a server keeps of exactly-once calls, so that a retried call (same call id) is
//! answered with the outcome of its first run instead of running the method again.
//!
//! A call id is in one of two states: *running* (its first try is executing; a repeat waits for
//! its outcome) or *done* (the outcome is kept). Done outcomes are forgotten oldest first once
//! the table holds more than [`OutcomeLimits::max_calls`] of them or more than
//! [`OutcomeLimits::max_bytes`] (payloads plus 128 bytes of bookkeeping each), and when they are older than
//! [`OutcomeLimits::max_age`]. A try that repeats a forgotten id runs the method again: the
//! limits are the window in which a call is exactly-once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::wire::Status;

/// How many outcomes of exactly-once calls a server keeps, and for how long.
///
/// ```
/// # use std::time::Duration;
/// let mut limits = bigmachine_core::OutcomeLimits::default();
/// limits.max_age = Duration::from_secs(30 * 60);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutcomeLimits {
    /// Outcomes kept at most. Default: 100,000.
    pub max_calls: usize,
    /// How long an outcome is kept after its call ended; retries of a call must come within
    /// it. Default: 10 minutes.
    pub max_age: Duration,
    /// Bytes kept at most: reply (and error) archives, plus 128 bytes of bookkeeping per
    /// outcome. An outcome larger than this is kept as an error saying so (a repeat of its
    /// call fails instead of running the method again). Default: 256 MiB.
    pub max_bytes: usize,
}

impl Default for OutcomeLimits {
    fn default() -> Self {
        Self {
            max_calls: 100_000,
            max_age: Duration::from_secs(10 * 60),
            max_bytes: 256 << 20,
        }
    }
}

/// The outcome of a call as its reply carries it: the status and the payload's bytes (shared,
/// so each repeat sends them without a copy), `payload` then `tail`.
#[derive(Debug, Clone)]
pub(crate) struct Kept {
    pub(crate) status: Status,
    pub(crate) payload: Bytes,
    /// The bytes after `payload`, if the payload came in two parts ([`Outcome::Parts`]).
    ///
    /// [`Outcome::Parts`]: crate::service::Outcome::Parts
    pub(crate) tail: Bytes,
}

impl Kept {
    /// An outcome whose payload is one buffer.
    pub(crate) fn new(status: Status, payload: Bytes) -> Self {
        Self {
            status,
            payload,
            tail: Bytes::new(),
        }
    }

    /// The payload's length.
    pub(crate) fn len(&self) -> usize {
        self.payload.len() + self.tail.len()
    }
}

/// What a server does with a try of an exactly-once call.
pub(crate) enum Begin {
    /// The first try: run the method and [`Recorder::record`] its outcome.
    First(Recorder),
    /// A repeat while the first try runs: wait for its outcome ([`Begin::wait`]).
    Running(watch::Receiver<Option<Kept>>),
    /// A repeat after the first try ended: answer with this.
    Done(Kept),
    /// The id is taken by a call of another method (or reply type): a caller that reuses ids,
    /// answered with an error rather than another call's outcome.
    Conflict,
}

impl Begin {
    /// For [`Begin::Running`]: the first try's outcome, or `None` if it ended without one (its
    /// task was torn down with the server).
    pub(crate) async fn wait(mut rx: watch::Receiver<Option<Kept>>) -> Option<Kept> {
        rx.wait_for(Option::is_some).await.ok()?.clone()
    }
}

/// The exactly-once outcomes of one server.
#[derive(Debug, Clone)]
pub(crate) struct Outcomes {
    inner: Arc<Mutex<Table>>,
}

#[derive(Debug)]
struct Table {
    limits: OutcomeLimits,
    slots: HashMap<u128, Slot>,
    /// Done outcomes in the order they ended: (id, sequence, ended at).
    done: VecDeque<(u128, u64, Instant)>,
    bytes: usize,
    next_seq: u64,
}

/// A call id's slot: which call took it ([`call_of`]), and its state.
#[derive(Debug)]
struct Slot {
    call: u64,
    state: State,
}

#[derive(Debug)]
enum State {
    Running(watch::Receiver<Option<Kept>>),
    Done { kept: Kept, seq: u64 },
}

/// What identifies a call besides its id: its method and reply type. A repeat must match the
/// first try in both.
pub(crate) fn call_of(method: &str, reply_type: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    method.hash(&mut h);
    reply_type.hash(&mut h);
    h.finish()
}

impl Outcomes {
    pub(crate) fn new(limits: OutcomeLimits) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Table {
                limits,
                slots: HashMap::new(),
                done: VecDeque::new(),
                bytes: 0,
                next_seq: 0,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a try of call `id`, a call of `call` ([`call_of`]).
    pub(crate) fn begin(&self, id: u128, call: u64) -> Begin {
        let mut table = self.lock();
        table.forget_old(Instant::now());
        match table.slots.get(&id) {
            Some(slot) if slot.call != call => Begin::Conflict,
            Some(Slot {
                state: State::Running(rx),
                ..
            }) => Begin::Running(rx.clone()),
            Some(Slot {
                state: State::Done { kept, .. },
                ..
            }) => Begin::Done(kept.clone()),
            None => {
                let (tx, rx) = watch::channel(None);
                table.slots.insert(
                    id,
                    Slot {
                        call,
                        state: State::Running(rx),
                    },
                );
                Begin::First(Recorder {
                    outcomes: self.clone(),
                    id,
                    call,
                    tx: Some(tx),
                })
            }
        }
    }

    /// Outcomes kept and calls running.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().slots.len()
    }
}

impl Table {
    /// Forgets done outcomes past the limits, oldest first.
    fn forget_old(&mut self, now: Instant) {
        while let Some(&(id, seq, ended)) = self.done.front() {
            let over = self.done.len() > self.limits.max_calls
                || self.bytes > self.limits.max_bytes
                || now.saturating_duration_since(ended) > self.limits.max_age;
            if !over {
                break;
            }
            self.done.pop_front();
            if let Some(Slot {
                state: State::Done { kept, seq: s },
                ..
            }) = self.slots.get(&id)
            {
                if *s == seq {
                    self.bytes -= cost(kept);
                    self.slots.remove(&id);
                }
            }
        }
    }
}

/// Bytes an outcome is counted for: its payload and the table's own bookkeeping.
fn cost(kept: &Kept) -> usize {
    kept.len() + ENTRY_OVERHEAD
}

/// The table's bytes per outcome besides its payload (map slot, queue entry, buffer header).
const ENTRY_OVERHEAD: usize = 128;

/// What is kept of an outcome larger than the table may hold: an error saying so.
fn too_large(kept: &Kept) -> Kept {
    let e = crate::error::Error::fatal(
        crate::error::Kind::Unavailable,
        format!(
            "the outcome of this exactly-once call ({} bytes) was larger than the machine keeps \
             (OutcomeLimits::max_bytes); it was sent once and cannot be sent again",
            kept.len()
        ),
    );
    let payload = crate::wire::encode_error(&e)
        .map(|p| Bytes::from_owner(crate::buffers::Pooled(p)))
        .unwrap_or_default();
    Kept::new(Status::ServerError, payload)
}

/// Held by the first try of an exactly-once call: records its outcome, or, dropped without one,
/// lets the id be tried afresh.
pub(crate) struct Recorder {
    outcomes: Outcomes,
    id: u128,
    call: u64,
    tx: Option<watch::Sender<Option<Kept>>>,
}

impl Recorder {
    /// Keeps `kept` as the call's outcome and hands it to repeats waiting for it.
    pub(crate) fn record(mut self, kept: Kept) {
        let now = Instant::now();
        {
            let mut table = self.outcomes.lock();
            // An outcome too large to keep is kept as an error: a repeat fails rather than
            // running the method again, and the table keeps the outcomes it holds.
            let stored = if cost(&kept) > table.limits.max_bytes {
                too_large(&kept)
            } else {
                kept.clone()
            };
            let seq = table.next_seq;
            table.next_seq += 1;
            table.bytes += cost(&stored);
            table.done.push_back((self.id, seq, now));
            table.slots.insert(
                self.id,
                Slot {
                    call: self.call,
                    state: State::Done { kept: stored, seq },
                },
            );
            table.forget_old(now);
        }
        if let Some(tx) = self.tx.take() {
            tx.send_replace(Some(kept));
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.tx.is_some() {
            // No outcome: repeats waiting see the sender go; the id may be tried again.
            let mut table = self.outcomes.lock();
            if matches!(
                table.slots.get(&self.id),
                Some(Slot {
                    state: State::Running(_),
                    ..
                })
            ) {
                table.slots.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(n: usize) -> Kept {
        Kept::new(Status::Ok, Bytes::from(vec![7u8; n]))
    }

    fn first(b: Begin) -> Recorder {
        match b {
            Begin::First(r) => r,
            _ => panic!("expected a first try"),
        }
    }

    #[tokio::test]
    async fn repeats_wait_for_the_first_outcome_then_get_it() {
        let outcomes = Outcomes::new(OutcomeLimits::default());
        let recorder = first(outcomes.begin(1, 0));
        let Begin::Running(rx) = outcomes.begin(1, 0) else {
            panic!("a repeat during the first try must wait");
        };
        let waiter = tokio::spawn(Begin::wait(rx));
        recorder.record(kept(3));
        let got = waiter.await.ok().flatten().map(|k| k.payload.len());
        assert_eq!(got, Some(3));
        assert!(matches!(outcomes.begin(1, 0), Begin::Done(k) if k.payload.len() == 3));
        // Another id is a first try of its own.
        assert!(matches!(outcomes.begin(2, 0), Begin::First(_)));
    }

    #[tokio::test]
    async fn a_first_try_without_an_outcome_frees_its_id() {
        let outcomes = Outcomes::new(OutcomeLimits::default());
        let recorder = first(outcomes.begin(5, 0));
        let Begin::Running(rx) = outcomes.begin(5, 0) else {
            panic!("expected running");
        };
        drop(recorder);
        assert!(Begin::wait(rx).await.is_none());
        assert!(matches!(outcomes.begin(5, 0), Begin::First(_)));
    }

    #[tokio::test]
    async fn outcomes_beyond_the_count_or_bytes_are_forgotten_oldest_first() {
        let limits = OutcomeLimits {
            max_calls: 3,
            ..OutcomeLimits::default()
        };
        let outcomes = Outcomes::new(limits);
        for id in 0..5 {
            first(outcomes.begin(id, 0)).record(kept(10));
        }
        // Ids 0 and 1 are forgotten (a repeat runs afresh), 2..5 kept.
        assert_eq!(outcomes.len(), 3);
        for id in 2..5 {
            assert!(matches!(outcomes.begin(id, 0), Begin::Done(_)), "{id}");
        }
        assert!(matches!(outcomes.begin(0, 0), Begin::First(_)));
        // Room for two outcomes of 50 bytes: a second of 60 forgets the first.
        let outcomes = Outcomes::new(OutcomeLimits {
            max_bytes: 100 + 2 * ENTRY_OVERHEAD,
            ..OutcomeLimits::default()
        });
        first(outcomes.begin(10, 0)).record(kept(60));
        first(outcomes.begin(11, 0)).record(kept(60));
        assert!(matches!(outcomes.begin(11, 0), Begin::Done(_)));
        assert!(matches!(outcomes.begin(10, 0), Begin::First(_)));
    }

    #[tokio::test]
    async fn an_outcome_larger_than_the_table_is_kept_as_an_error_and_evicts_nothing() {
        let limits = OutcomeLimits {
            max_bytes: 1000,
            ..OutcomeLimits::default()
        };
        let outcomes = Outcomes::new(limits);
        first(outcomes.begin(1, 0)).record(kept(10));
        first(outcomes.begin(2, 0)).record(kept(5000));
        assert!(matches!(outcomes.begin(1, 0), Begin::Done(k) if k.payload.len() == 10));
        let Begin::Done(big) = outcomes.begin(2, 0) else {
            panic!("the large outcome's id was forgotten: a repeat would run again");
        };
        assert_eq!(big.status, Status::ServerError);
        let e = crate::wire::decode_error(&big.payload);
        assert!(
            e.to_string().contains("larger than the machine keeps"),
            "{e}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_older_than_max_age_are_forgotten() {
        let limits = OutcomeLimits {
            max_age: Duration::from_secs(60),
            ..OutcomeLimits::default()
        };
        let outcomes = Outcomes::new(limits);
        first(outcomes.begin(1, 0)).record(kept(1));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(matches!(outcomes.begin(1, 0), Begin::Done(_)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(matches!(outcomes.begin(1, 0), Begin::First(_)));
    }

    #[tokio::test]
    async fn an_id_reused_by_another_call_gets_no_outcome_of_the_first() {
        let outcomes = Outcomes::new(OutcomeLimits::default());
        let (deposit, withdraw) = (call_of("Bank.deposit", 1), call_of("Bank.withdraw", 1));
        let recorder = first(outcomes.begin(9, deposit));
        assert!(matches!(outcomes.begin(9, withdraw), Begin::Conflict));
        recorder.record(kept(4));
        assert!(matches!(outcomes.begin(9, withdraw), Begin::Conflict));
        // Another reply type is another call too.
        assert!(matches!(
            outcomes.begin(9, call_of("Bank.deposit", 2)),
            Begin::Conflict
        ));
        assert!(matches!(outcomes.begin(9, deposit), Begin::Done(k) if k.payload.len() == 4));
    }

    #[tokio::test]
    async fn a_forgotten_id_run_again_is_not_forgotten_by_its_old_entry() {
        let limits = OutcomeLimits {
            max_calls: 1,
            ..OutcomeLimits::default()
        };
        let outcomes = Outcomes::new(limits);
        first(outcomes.begin(1, 0)).record(kept(1));
        first(outcomes.begin(2, 0)).record(kept(1)); // forgets 1
        first(outcomes.begin(1, 0)).record(kept(2)); // forgets 2; 1's old entry is gone already
        assert!(matches!(outcomes.begin(1, 0), Begin::Done(k) if k.payload.len() == 2));
    }
}
