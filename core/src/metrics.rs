//! What a machine counts about the calls it serves, per method: calls, errors by kind and
//! origin, calls in flight, latency, request and reply bytes, reply-stream bytes.
//!
//! The counters are plain atomics resolved once per method (a read-locked map lookup per call,
//! no allocation), so that counting costs the small-call path next to nothing. They are read as
//! a [`Snapshot`] of metric families (what the Supervisor's `metrics` method answers), which
//! the driver merges over the cluster, labelled by machine, into one Prometheus scrape.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Kind;

/// Upper bound of the first latency bucket; each next bucket's is 4 times larger.
const FIRST_BUCKET_NS: u64 = 25_000;
/// Latency buckets with a finite bound (25 µs, 100 µs, 400 µs ... 25 µs × 4¹¹ ≈ 105 s), then
/// one for the rest: few enough that a scrape of many machines stays small.
const BUCKETS: usize = 12;

/// Methods counted apart; calls of further methods are counted together under
/// [`OTHER_METHODS`] (a service that accepts any method name cannot grow the series without
/// bound).
const MAX_METHODS: usize = 1024;
/// The `method` label of the calls beyond [`MAX_METHODS`].
const OTHER_METHODS: &str = "(other)";

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum MetricKind {
    /// Only goes up (its exposition name ends in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution in buckets, with its sum and count.
    Histogram,
}

/// One series of a family: its labels and value.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Series {
    /// Label names and values (the `machine` label is added by whoever merges machines).
    pub labels: Vec<(String, String)>,
    /// A counter's or gauge's value; a histogram's count.
    pub value: f64,
    /// A histogram's sum of observations (0 otherwise).
    pub sum: f64,
    /// A histogram's buckets: upper bound and the observations in that bucket alone (not
    /// cumulative); the last bound is infinity. Empty for counters and gauges.
    pub buckets: Vec<(f64, u64)>,
}

/// A named family of series, as Prometheus has them.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct MetricFamily {
    /// The name (a counter's without `_total`).
    pub name: String,
    /// What it measures.
    pub help: String,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// Its series.
    pub series: Vec<Series>,
}

impl MetricFamily {
    /// A family of one series without labels.
    pub fn single(name: &str, help: &str, kind: MetricKind, value: f64) -> Self {
        Self {
            name: name.to_string(),
            help: help.to_string(),
            kind,
            series: vec![Series::value(Vec::new(), value)],
        }
    }
}

impl Series {
    /// A counter's or gauge's series.
    pub fn value(labels: Vec<(String, String)>, value: f64) -> Self {
        Self {
            labels,
            value,
            sum: 0.0,
            buckets: Vec::new(),
        }
    }
}

/// The metric families of one machine (or of the driver), at one moment.
pub type Snapshot = Vec<MetricFamily>;

/// The counters of one server (one machine). Cheap to clone; clones count together.
/// [`Metrics::disabled`] counts nothing.
#[derive(Debug, Clone)]
pub struct Metrics {
    methods: Option<Arc<RwLock<MethodTable>>>,
}

/// The counters of each method, by `Service.method`.
type MethodTable = HashMap<Box<str>, Arc<MethodMetrics>>;

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Counters that count.
    pub fn new() -> Self {
        Self {
            methods: Some(Arc::default()),
        }
    }

    /// Counters that count nothing (to price the counting).
    pub fn disabled() -> Self {
        Self { methods: None }
    }

    /// The counters of `method` (`Service.method`), made on its first call.
    fn method(&self, method: &str) -> Option<Arc<MethodMetrics>> {
        let methods = self.methods.as_ref()?;
        if let Some(m) = methods
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(method)
        {
            return Some(m.clone());
        }
        let mut methods = methods.write().unwrap_or_else(PoisonError::into_inner);
        let name = if methods.len() >= MAX_METHODS && !methods.contains_key(method) {
            OTHER_METHODS
        } else {
            method
        };
        Some(methods.entry(name.into()).or_default().clone())
    }

    /// Starts counting a call of `method` (one a service of the machine accepts: methods
    /// nobody serves are not counted, so a peer cannot make up series) whose request announced
    /// an argument of `request_bytes`, and arrived at `arrived`.
    pub(crate) fn begin(&self, method: &str, request_bytes: u64, arrived: Instant) -> Tally {
        let m = self.method(method);
        if let Some(m) = &m {
            m.calls.fetch_add(1, Relaxed);
            m.in_flight.fetch_add(1, Relaxed);
            m.request_bytes.fetch_add(request_bytes, Relaxed);
        }
        Tally { m, arrived }
    }

    /// The families of every method counted so far.
    pub fn snapshot(&self) -> Snapshot {
        let Some(methods) = &self.methods else {
            return Vec::new();
        };
        let mut methods: Vec<(String, Arc<MethodMetrics>)> = methods
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        methods.sort_by(|a, b| a.0.cmp(&b.0));
        let family = |name: &str, help: &str, kind, series| MetricFamily {
            name: name.to_string(),
            help: help.to_string(),
            kind,
            series,
        };
        let per_method = |read: &dyn Fn(&MethodMetrics) -> f64| {
            methods
                .iter()
                .map(|(name, m)| Series::value(vec![("method".into(), name.clone())], read(m)))
                .collect()
        };
        let mut errors = Vec::new();
        for (name, m) in &methods {
            for (origin, kinds) in ORIGINS.iter().zip(&m.errors) {
                for (kind, count) in Kind::ALL.iter().zip(kinds) {
                    let count = count.load(Relaxed);
                    if count == 0 {
                        continue;
                    }
                    errors.push(Series::value(
                        vec![
                            ("method".into(), name.clone()),
                            ("kind".into(), format!("{kind:?}")),
                            ("origin".into(), (*origin).into()),
                        ],
                        count as f64,
                    ));
                }
            }
        }
        let latency = methods
            .iter()
            .map(|(name, m)| m.latency.series(vec![("method".into(), name.clone())]))
            .collect();
        vec![
            family(
                "bigmachine_calls",
                "Calls served, by method.",
                MetricKind::Counter,
                per_method(&|m| m.calls.load(Relaxed) as f64),
            ),
            family(
                "bigmachine_call_errors",
                "Calls that ended in an error, by method, error kind and origin (method: the \
                 method returned it; server: the call could not run; caller: the caller went \
                 away first).",
                MetricKind::Counter,
                errors,
            ),
            family(
                "bigmachine_calls_in_flight",
                "Calls being served, by method.",
                MetricKind::Gauge,
                per_method(&|m| m.in_flight.load(Relaxed) as f64),
            ),
            family(
                "bigmachine_call_latency_seconds",
                "Time from a request's arrival to its reply's last byte handed to the transport (for a method that waits for its reply's delivery, to the caller's acknowledgement).",
                MetricKind::Histogram,
                latency,
            ),
            family(
                "bigmachine_request_bytes",
                "Bytes of arguments, as requests announced them, by method.",
                MetricKind::Counter,
                per_method(&|m| m.request_bytes.load(Relaxed) as f64),
            ),
            family(
                "bigmachine_reply_bytes",
                "Bytes of archived replies sent, by method.",
                MetricKind::Counter,
                per_method(&|m| m.reply_bytes.load(Relaxed) as f64),
            ),
            family(
                "bigmachine_reply_stream_bytes",
                "Bytes of reply streams sent, by method.",
                MetricKind::Counter,
                per_method(&|m| m.stream_bytes.load(Relaxed) as f64),
            ),
        ]
    }
}

/// Where a call's error came from.
const ORIGINS: [&str; 3] = ["method", "server", "caller"];

/// Who ended a call with an error.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Origin {
    /// The method returned it (or panicked).
    Method = 0,
    /// The engine could not run the call.
    Server = 1,
    /// The caller went away first.
    Caller = 2,
}

/// How a call ended, as its reply says.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ended {
    /// An archived reply of this many bytes was sent.
    Replied(u64),
    /// A reply stream ended well (its bytes are counted as they go: [`Tally::stream_bytes`]).
    Streamed,
    /// The call failed with this kind of error.
    Failed(Kind, Origin),
}

/// The counters of one method.
#[derive(Debug, Default)]
struct MethodMetrics {
    calls: AtomicU64,
    in_flight: AtomicI64,
    request_bytes: AtomicU64,
    reply_bytes: AtomicU64,
    stream_bytes: AtomicU64,
    /// By origin, then kind.
    errors: [[AtomicU64; Kind::ALL.len()]; ORIGINS.len()],
    latency: Latency,
}

/// A latency histogram of atomics: a call adds to one bucket, the count and the sum.
#[derive(Debug, Default)]
struct Latency {
    buckets: [AtomicU64; BUCKETS + 1],
    sum_ns: AtomicU64,
}

impl Latency {
    fn observe(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        // The bucket is ⌈log₄(ns / 25 µs)⌉: half the bits of the quotient, rounded up.
        let over = ns.saturating_sub(1) / FIRST_BUCKET_NS;
        let bucket = (u64::BITS - over.leading_zeros()).div_ceil(2) as usize;
        self.buckets[bucket.min(BUCKETS)].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    fn series(&self, labels: Vec<(String, String)>) -> Series {
        let buckets: Vec<(f64, u64)> = (0..=BUCKETS)
            .map(|i| {
                let bound = if i == BUCKETS {
                    f64::INFINITY
                } else {
                    (FIRST_BUCKET_NS << (2 * i)) as f64 / 1e9
                };
                (bound, self.buckets[i].load(Relaxed))
            })
            .collect();
        let count: u64 = buckets.iter().map(|(_, n)| n).sum();
        Series {
            labels,
            value: count as f64,
            sum: self.sum_ns.load(Relaxed) as f64 / 1e9,
            buckets,
        }
    }
}

/// One call being counted: it leaves the in-flight count when dropped, and a call dropped
/// without [`Tally::end`] counts as one its caller left ([`Kind::Canceled`]).
#[derive(Debug)]
pub(crate) struct Tally {
    m: Option<Arc<MethodMetrics>>,
    arrived: Instant,
}

/// Where the reply-stream bytes of an uncounted call go.
static UNCOUNTED: AtomicU64 = AtomicU64::new(0);

impl Tally {
    /// The counter of the call's reply-stream bytes (added as they are sent, so a long stream
    /// shows in scrapes while it runs).
    pub(crate) fn stream_bytes(&self) -> &AtomicU64 {
        self.m.as_ref().map_or(&UNCOUNTED, |m| &m.stream_bytes)
    }

    /// Counts how the call ended (`None`: its caller went away or its stream broke) and its
    /// latency.
    pub(crate) fn end(mut self, ended: Option<Ended>) {
        if let Some(m) = self.m.take() {
            record(&m, self.arrived, ended);
        }
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        if let Some(m) = self.m.take() {
            record(&m, self.arrived, None);
        }
    }
}

fn record(m: &MethodMetrics, arrived: Instant, ended: Option<Ended>) {
    m.in_flight.fetch_sub(1, Relaxed);
    m.latency.observe(arrived.elapsed());
    let (kind, origin) = match ended {
        Some(Ended::Replied(bytes)) => {
            m.reply_bytes.fetch_add(bytes, Relaxed);
            return;
        }
        Some(Ended::Streamed) => return,
        Some(Ended::Failed(kind, origin)) => (kind, origin),
        None => (Kind::Canceled, Origin::Caller),
    };
    m.errors[origin as usize][kind.code() as usize].fetch_add(1, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn family<'a>(snapshot: &'a Snapshot, name: &str) -> &'a MetricFamily {
        snapshot
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no family {name}"))
    }

    #[tokio::test(start_paused = true)]
    async fn calls_errors_bytes_and_latency_are_counted_per_method() {
        let metrics = Metrics::new();
        let t = metrics.begin("S.a", 10, Instant::now());
        tokio::time::advance(Duration::from_micros(30)).await;
        t.end(Some(Ended::Replied(7)));
        let t = metrics.begin("S.a", 5, Instant::now());
        t.end(Some(Ended::Failed(Kind::Invalid, Origin::Method)));
        let open = metrics.begin("S.b", 0, Instant::now());
        let gone = metrics.begin("S.b", 0, Instant::now());
        drop(gone);
        let s = metrics.snapshot();
        let calls = &family(&s, "bigmachine_calls").series;
        assert_eq!(
            (calls[0].labels[0].1.as_str(), calls[0].value),
            ("S.a", 2.0)
        );
        assert_eq!(
            (calls[1].labels[0].1.as_str(), calls[1].value),
            ("S.b", 2.0)
        );
        let errors = &family(&s, "bigmachine_call_errors").series;
        let labels = |s: &Series| s.labels.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>();
        assert_eq!(labels(&errors[0]), ["S.a", "Invalid", "method"]);
        assert_eq!(labels(&errors[1]), ["S.b", "Canceled", "caller"]);
        assert_eq!(errors.len(), 2);
        let in_flight = &family(&s, "bigmachine_calls_in_flight").series;
        assert_eq!((in_flight[0].value, in_flight[1].value), (0.0, 1.0));
        assert_eq!(family(&s, "bigmachine_request_bytes").series[0].value, 15.0);
        assert_eq!(family(&s, "bigmachine_reply_bytes").series[0].value, 7.0);
        let latency = &family(&s, "bigmachine_call_latency_seconds").series[0];
        assert_eq!(latency.value, 2.0);
        // 30 µs lands in the second bucket (25–100 µs), 0 in the first.
        assert_eq!((latency.buckets[0].1, latency.buckets[1].1), (1, 1));
        assert!((latency.sum - 30e-6).abs() < 1e-9);
        drop(open);
    }

    #[test]
    fn latency_buckets_grow_fourfold_and_end_in_infinity() {
        let l = Latency::default();
        for us in [1, 25, 26, 100, 101, 400, 401, 1600] {
            l.observe(Duration::from_micros(us));
        }
        l.observe(Duration::from_secs(3600));
        let s = l.series(Vec::new());
        let counts: Vec<u64> = s.buckets.iter().take(4).map(|b| b.1).collect();
        assert_eq!(counts, [2, 2, 2, 2]);
        assert_eq!(s.buckets[3].0, 1.6e-3);
        assert_eq!(s.buckets[BUCKETS], (f64::INFINITY, 1));
        assert_eq!(s.value, 9.0);
    }

    #[test]
    fn disabled_metrics_count_nothing() {
        let metrics = Metrics::disabled();
        metrics.begin("S.a", 1, Instant::now()).end(None);
        assert!(metrics.snapshot().is_empty());
    }
}
