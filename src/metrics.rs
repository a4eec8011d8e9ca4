//! The cluster's metrics as one program's: every machine's families (what its Supervisor's
//! `metrics` method answers) and the driver's own, merged into one family per name with a
//! `machine` label, then encoded as Prometheus text (with `prometheus-client`) or as the JSON
//! vars of the original (`/debug/bigmachine/vars`).
//!
//! Names of the families (counters get `_total` in the text):
//!
//! | family | labels | what |
//! |---|---|---|
//! | `bigmachine_calls` | method | calls served |
//! | `bigmachine_call_errors` | method, kind, origin | calls that ended in an error |
//! | `bigmachine_calls_in_flight` | method | calls being served |
//! | `bigmachine_call_latency_seconds` | method | histogram, arrival to last reply byte |
//! | `bigmachine_request_bytes`, `_reply_bytes`, `_reply_stream_bytes` | method | bytes |
//! | `bigmachine_uptime_seconds`, `_processors`, `_process_resident_bytes`, `_host_memory_bytes`, `_host_memory_available_bytes`, `_disk_bytes`, `_disk_available_bytes`, `_load1` | | the machine |
//! | `bigmachine_machines` | state (driver) | machines by state |
//! | `bigmachine_keepalive_round_trip_seconds` | machine (driver) | the last keepalive's round trip |
//! | `bigmachine_binary_upload_bytes` | (driver) | bytes of binaries uploaded to machines |

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use bigmachine_core::{MetricFamily, MetricKind, Series, Snapshot, State, B};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde_json::{Map, Value};

/// The `machine` label of the driver's own families.
pub const DRIVER: &str = "driver";

/// The families of one machine (by its address) or of the driver ([`DRIVER`]).
#[derive(Debug, Clone)]
pub struct Source {
    /// The `machine` label of its series.
    pub machine: String,
    /// Its families.
    pub families: Snapshot,
}

/// The families of the driver and of every running machine of `b` (asked at once, each
/// allowed `within`; a machine that does not answer in time is left out and named in the
/// returned list of failures).
pub async fn gather(b: &B, within: Duration) -> (Vec<Source>, Vec<String>) {
    let machines: Vec<_> = b
        .machines()
        .into_iter()
        .filter(|m| m.state() == State::Running)
        .collect();
    let asked = machines.iter().map(|m| async move {
        let answer = tokio::time::timeout(within, m.metrics()).await;
        (m.addr().to_string(), answer)
    });
    let mut sources = vec![Source {
        machine: DRIVER.to_string(),
        families: driver_families(b),
    }];
    let mut failed = Vec::new();
    for (machine, answer) in futures::future::join_all(asked).await {
        match answer {
            Ok(Ok(families)) => sources.push(Source { machine, families }),
            Ok(Err(e)) => failed.push(format!("{machine}: {e}")),
            Err(_) => failed.push(format!("{machine}: no answer within {within:?}")),
        }
    }
    (sources, failed)
}

/// What the driver itself knows: machines by state, each one's last keepalive round trip,
/// binary bytes uploaded.
fn driver_families(b: &B) -> Snapshot {
    let machines = b.machines();
    let mut by_state: Vec<(String, f64)> = Vec::new();
    for m in &machines {
        let state = m.state().to_string();
        match by_state.iter_mut().find(|(s, _)| *s == state) {
            Some((_, n)) => *n += 1.0,
            None => by_state.push((state, 1.0)),
        }
    }
    let keepalives = machines
        .iter()
        .filter_map(|m| {
            let last = m.keepalive_reply_times().first().copied()?;
            Some(Series::value(
                vec![("machine".into(), m.addr().to_string())],
                last.as_secs_f64(),
            ))
        })
        .collect();
    vec![
        MetricFamily {
            name: "bigmachine_machines".into(),
            help: "Machines of the driver, by state.".into(),
            kind: MetricKind::Gauge,
            series: by_state
                .into_iter()
                .map(|(state, n)| Series::value(vec![("state".into(), state)], n))
                .collect(),
        },
        MetricFamily {
            name: "bigmachine_keepalive_round_trip_seconds".into(),
            help: "Round trip of the last keepalive, by machine.".into(),
            kind: MetricKind::Gauge,
            series: keepalives,
        },
        MetricFamily::single(
            "bigmachine_binary_upload_bytes",
            "Bytes of binaries the driver uploaded to machines.",
            MetricKind::Counter,
            b.binary_bytes_uploaded() as f64,
        ),
    ]
}

/// Whether `name` may name a metric or a label in Prometheus text.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// One family over every source: the series of each, with the `machine` label to add (`None`:
/// a driver's series that names its machine itself, such as a keepalive's round trip).
struct Merged<'a> {
    help: &'a str,
    kind: MetricKind,
    series: Vec<(Option<&'a str>, &'a Series)>,
}

/// The families of `sources` by name, in the order first seen. A family whose kind differs
/// from the first source's, names Prometheus cannot take, and a machine's series that name a
/// `machine` themselves (only the driver's may) are left out.
fn merge(sources: &[Source]) -> Vec<(&str, Merged<'_>)> {
    let mut merged: Vec<(&str, Merged<'_>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for source in sources {
        for family in &source.families {
            if !valid_name(&family.name) {
                continue;
            }
            let i = *index.entry(&family.name).or_insert_with(|| {
                merged.push((
                    &family.name,
                    Merged {
                        help: &family.help,
                        kind: family.kind,
                        series: Vec::new(),
                    },
                ));
                merged.len() - 1
            });
            let m = &mut merged[i].1;
            if m.kind != family.kind {
                continue;
            }
            let driver = source.machine == DRIVER;
            for series in &family.series {
                if !series.labels.iter().all(|(k, _)| valid_name(k)) {
                    continue;
                }
                let named = series.labels.iter().any(|(k, _)| k == "machine");
                match (named, driver) {
                    (false, _) => m.series.push((Some(source.machine.as_str()), series)),
                    (true, true) => m.series.push((None, series)),
                    (true, false) => {}
                }
            }
        }
    }
    merged
}

/// `sources` as one Prometheus text exposition (format 0.0.4): one family per name, each
/// series labelled with its `machine`.
pub fn prometheus_text(sources: &[Source]) -> String {
    #[derive(Debug)]
    struct Families(Vec<Source>);
    impl Collector for Families {
        fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
            for (name, family) in merge(&self.0) {
                let kind = match family.kind {
                    MetricKind::Counter => MetricType::Counter,
                    MetricKind::Gauge => MetricType::Gauge,
                    MetricKind::Histogram => MetricType::Histogram,
                };
                let mut metric = encoder.encode_descriptor(name, family.help, None, kind)?;
                for (machine, series) in family.series {
                    let labels: Vec<(&str, &str)> = machine
                        .map(|m| ("machine", m))
                        .into_iter()
                        .chain(series.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                        .collect();
                    let mut one = metric.encode_family(&labels)?;
                    match family.kind {
                        MetricKind::Counter => one
                            .encode_counter::<NoLabelSet, u64, u64>(&(series.value as u64), None)?,
                        MetricKind::Gauge => one.encode_gauge(&series.value)?,
                        MetricKind::Histogram => one.encode_histogram::<NoLabelSet>(
                            series.sum,
                            series.value as u64,
                            &series.buckets,
                            None,
                        )?,
                    }
                }
            }
            Ok(())
        }
    }
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Families(sources.to_vec())));
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
        tracing::warn!(error = %e, "metrics could not be encoded");
    }
    text
}

/// The content type of [`prometheus_text`].
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// `sources` as the original's JSON vars: per machine, an object of `name{labels}` to value
/// (a histogram's value is `{"count", "sum"}`).
pub fn vars(sources: &[Source]) -> Value {
    let mut out = Map::new();
    for source in sources {
        let mut vars = Map::new();
        for family in &source.families {
            for series in &family.series {
                let mut key = family.name.clone();
                if !series.labels.is_empty() {
                    let labels: Vec<String> = series
                        .labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v:?}"))
                        .collect();
                    key = format!("{key}{{{}}}", labels.join(","));
                }
                let value = match family.kind {
                    MetricKind::Histogram => {
                        serde_json::json!({"count": series.value, "sum": series.sum})
                    }
                    _ => serde_json::json!(series.value),
                };
                vars.insert(key, value);
            }
        }
        out.insert(source.machine.clone(), Value::Object(vars));
    }
    Value::Object(out)
}

/// The sum over `family`'s series in `families` (0 when absent).
pub fn total(families: &[MetricFamily], family: &str) -> f64 {
    families
        .iter()
        .filter(|f| f.name == family)
        .flat_map(|f| &f.series)
        .map(|s| s.value)
        .sum()
}

/// The sum over `family`'s series of the program's own methods: the Supervisor's (keepalives,
/// these very scrapes) left out.
pub fn user_total(families: &[MetricFamily], family: &str) -> f64 {
    let supervisor = format!("{}.", bigmachine_core::__internal::SUPERVISOR);
    families
        .iter()
        .filter(|f| f.name == family)
        .flat_map(|f| &f.series)
        .filter(|s| {
            !s.labels
                .iter()
                .any(|(k, v)| k == "method" && v.starts_with(&supervisor))
        })
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(machine: &str, calls: f64) -> Source {
        Source {
            machine: machine.into(),
            families: vec![
                MetricFamily {
                    name: "bigmachine_calls".into(),
                    help: "Calls served, by method.".into(),
                    kind: MetricKind::Counter,
                    series: vec![Series::value(vec![("method".into(), "S.m".into())], calls)],
                },
                MetricFamily::single("bad name", "x", MetricKind::Gauge, 1.0),
            ],
        }
    }

    #[test]
    fn machines_merge_into_one_family_per_name() {
        let text = prometheus_text(&[source("a:1", 3.0), source("b:2", 5.0)]);
        assert_eq!(
            text.matches("# TYPE bigmachine_calls_total counter")
                .count(),
            1
        );
        assert!(text.contains("bigmachine_calls_total{machine=\"a:1\",method=\"S.m\"} 3\n"));
        assert!(text.contains("bigmachine_calls_total{machine=\"b:2\",method=\"S.m\"} 5\n"));
        assert!(!text.contains("bad name"), "{text}");
        assert!(
            text.contains("# HELP bigmachine_calls_total Calls served, by method.\n"),
            "{text}"
        );
    }

    #[test]
    fn only_the_driver_names_machines_itself() {
        let rtt = |machine: &str| Source {
            machine: machine.into(),
            families: vec![MetricFamily {
                name: "bigmachine_keepalive_round_trip_seconds".into(),
                help: "Round trip.".into(),
                kind: MetricKind::Gauge,
                series: vec![Series::value(vec![("machine".into(), "m:1".into())], 0.5)],
            }],
        };
        let text = prometheus_text(&[rtt(DRIVER), rtt("x:2")]);
        assert!(
            text.contains("bigmachine_keepalive_round_trip_seconds{machine=\"m:1\"} 0.5\n"),
            "{text}"
        );
        assert_eq!(text.matches("m:1").count(), 1, "{text}");
    }

    #[test]
    fn a_family_of_another_kind_is_left_out() {
        let mut other = source("b:2", 5.0);
        other.families[0].kind = MetricKind::Gauge;
        let text = prometheus_text(&[source("a:1", 3.0), other]);
        assert!(!text.contains("b:2"), "{text}");
    }

    #[test]
    fn vars_are_keyed_by_machine_then_series() {
        let v = vars(&[source("a:1", 3.0)]);
        assert_eq!(v["a:1"]["bigmachine_calls{method=\"S.m\"}"], 3.0);
    }
}
