//! The driver's debug pages, served on the program's runtime (axum):
//!
//! | path | what |
//! |---|---|
//! | `/debug/bigmachine/status` | every machine: state, uptime, processors, memory, disk, load, the program's calls in flight and per second (the Supervisor's own left out), last error, links to its profile and its last lines; refreshes itself every 5 s; JSON with `?format=json` or `Accept: application/json` |
//! | `/debug/bigmachine/metrics` | Prometheus text of the driver and every machine, one family per name, labelled by `machine` ([`crate::metrics`]) |
//! | `/debug/bigmachine/vars` | the same figures as JSON, per machine |
//! | `/debug/bigmachine/log?machine=ADDR` | the last lines a machine wrote (systems that keep them: the local system) |
//! | `/debug/bigmachine/pprof/profile?seconds=N` | a CPU profile of N seconds (default 30) of the driver and every machine, merged, each sample labelled with its `machine` ([`crate::profile`]); `&machine=ADDR` for one machine |
//! | `/debug/bigmachine/pprof/heap` | the same for heap profiles, when the program installed a heap profiler (501 otherwise) |
//!
//! Served when `--bigm.debug-addr` (or `BIGM_DEBUG_ADDR`) names a port (of loopback: `3333`)
//! or an address; an address beyond loopback is served with a warning. The pages read the
//! driver's state and ask machines for their metrics (each allowed 2 s). They answer only
//! requests that name the server by IP address or `localhost` (a guard against DNS
//! rebinding), and take one CPU profile at a time (503 while one is taken).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bigmachine_core::{Error, Kind, Machine, MetricFamily, Result, B};
use serde_json::{json, Value};

use crate::metrics::{self, Source};
use crate::profile::{self, Scope};

/// How long a page waits for a machine's metrics.
const ASK_WITHIN: Duration = Duration::from_secs(2);

/// What the pages share: the driver, and each machine's call count when the status page was
/// last served (for calls per second).
#[derive(Debug)]
struct Pages {
    b: B,
    last_calls: Mutex<HashMap<String, (Instant, f64)>>,
}

/// Serves the debug pages of `b` at `addr` (port 0 picks one) on the current tokio runtime,
/// until the runtime ends; returns the bound address. Must be called within a runtime.
pub fn serve(b: B, addr: SocketAddr) -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|e| Error::new(Kind::Other, format!("debug server at {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::new(Kind::Other, format!("debug server at {addr}: {e}")))?;
    tokio::spawn(run(listener, b, std::future::pending()));
    if bound.ip().is_loopback() {
        tracing::info!("debug pages at http://{bound}/debug/bigmachine/status");
    } else {
        tracing::warn!(
            "debug pages at http://{bound}/debug/bigmachine/status, open beyond this host: \
             anyone who reaches it sees the cluster's machines (bind 127.0.0.1 to keep them local)"
        );
    }
    Ok(bound)
}

/// Serves the debug pages of `b` on `listener` until `shutdown` completes.
pub async fn run(
    listener: tokio::net::TcpListener,
    b: B,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let pages = Arc::new(Pages {
        b,
        last_calls: Mutex::default(),
    });
    let app = Router::new()
        .route("/debug/bigmachine/status", get(status_page))
        .route("/debug/bigmachine/metrics", get(metrics_page))
        .route("/debug/bigmachine/vars", get(vars_page))
        .route("/debug/bigmachine/log", get(log_page))
        .route("/debug/bigmachine/pprof/profile", get(cpu_profile_page))
        .route("/debug/bigmachine/pprof/heap", get(heap_profile_page))
        .layer(axum::middleware::from_fn(addressed_by_ip))
        .with_state(pages);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(error = %e, "debug server stopped");
    }
}

/// Refuses a request that names this server by a host name other than `localhost` (an IP
/// address is fine): a web page a developer visits cannot then read these pages through a
/// name of its own that resolves to loopback (DNS rebinding).
async fn addressed_by_ip(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().map_err(|_| "(not text)"));
    match host {
        // No Host (HTTP/1.0): a tool, not a browser.
        None => next.run(request).await,
        Some(Ok(host)) if ip_or_localhost(host) => next.run(request).await,
        Some(host) => (
            StatusCode::FORBIDDEN,
            format!(
                "the debug pages answer only to an IP address or localhost, not {:?}\n",
                host.unwrap_or_else(|e| e)
            ),
        )
            .into_response(),
    }
}

/// Whether a Host header (`name`, `name:port`, `[v6]:port`) names an IP address or localhost.
fn ip_or_localhost(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, _)) => addr,
            None => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// The value of `key` in a query string (no percent-decoding: the values used here are
/// addresses and words).
fn query_value<'a>(query: &'a Option<String>, key: &str) -> Option<&'a str> {
    query
        .as_deref()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

async fn metrics_page(State(pages): State<Arc<Pages>>) -> Response {
    let (sources, failed) = metrics::gather(&pages.b, ASK_WITHIN).await;
    let mut text = metrics::prometheus_text(&sources);
    for f in failed {
        text.push_str(&format!("# machine left out: {}\n", f.replace('\n', " ")));
    }
    (
        [(header::CONTENT_TYPE, metrics::PROMETHEUS_CONTENT_TYPE)],
        text,
    )
        .into_response()
}

async fn vars_page(State(pages): State<Arc<Pages>>) -> Response {
    let (sources, _) = metrics::gather(&pages.b, ASK_WITHIN).await;
    json_response(metrics::vars(&sources))
}

/// The machines a profile request covers: `?machine=ADDR`, or the whole cluster.
fn scope(query: &Option<String>) -> std::result::Result<Scope, String> {
    match query_value(query, "machine") {
        None => Ok(Scope::Cluster),
        Some(addr) => addr
            .parse()
            .map(Scope::Machine)
            .map_err(|_| format!("bad machine address {addr:?}\n")),
    }
}

async fn cpu_profile_page(State(pages): State<Arc<Pages>>, RawQuery(query): RawQuery) -> Response {
    let seconds = match query_value(&query, "seconds").map(str::parse::<u64>) {
        None => 30,
        Some(Ok(s)) if (1..=profile::MAX_CPU_PROFILE.as_secs()).contains(&s) => s,
        Some(_) => {
            let max = profile::MAX_CPU_PROFILE.as_secs();
            return (
                StatusCode::BAD_REQUEST,
                format!("seconds: from 1 to {max}\n"),
            )
                .into_response();
        }
    };
    let scope = match scope(&query) {
        Ok(scope) => scope,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    let profile = profile::cpu(&pages.b, Duration::from_secs(seconds), scope).await;
    profile_response(profile, "cpu")
}

async fn heap_profile_page(State(pages): State<Arc<Pages>>, RawQuery(query): RawQuery) -> Response {
    let scope = match scope(&query) {
        Ok(scope) => scope,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    profile_response(profile::heap(&pages.b, scope).await, "heap")
}

fn profile_response(profile: Result<Vec<u8>>, kind: &str) -> Response {
    match profile {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{kind}.pb.gz\""),
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => {
            let status = match e.kind() {
                Kind::NotSupported => StatusCode::NOT_IMPLEMENTED,
                Kind::Invalid => StatusCode::BAD_REQUEST,
                // Another profile is being taken.
                Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (status, format!("{e}\n")).into_response()
        }
    }
}

async fn log_page(State(pages): State<Arc<Pages>>, RawQuery(query): RawQuery) -> Response {
    let Some(addr) = query_value(&query, "machine").and_then(|a| a.parse().ok()) else {
        return (StatusCode::BAD_REQUEST, "want ?machine=ADDR\n").into_response();
    };
    match pages.b.system().recent_lines(addr) {
        Some(lines) => {
            let mut text = lines.join("\n");
            text.push('\n');
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            format!(
                "the {} system keeps no lines of machine {addr}\n",
                pages.b.system().name()
            ),
        )
            .into_response(),
    }
}

async fn status_page(
    State(pages): State<Arc<Pages>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let wants_json = query_value(&query, "format") == Some("json")
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/json"));
    let status = status_with(&pages).await;
    if wants_json {
        json_response(status)
    } else {
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html(&status),
        )
            .into_response()
    }
}

fn json_response(value: Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// The status of `b` and its machines, as JSON, from the driver's state alone.
pub fn status(b: &B) -> Value {
    json!({
        "system": b.system().name(),
        "driver": b.addr().ok().map(|a| a.to_string()),
        "machines": b.machines().iter().map(|m| machine(b, m)).collect::<Vec<_>>(),
    })
}

/// [`status`], with what each running machine says of itself (its metrics) and its calls per
/// second since the page was last served.
async fn status_with(pages: &Pages) -> Value {
    let mut status = status(&pages.b);
    let (sources, _) = metrics::gather(&pages.b, ASK_WITHIN).await;
    let by_machine: HashMap<&str, &Source> =
        sources.iter().map(|s| (s.machine.as_str(), s)).collect();
    let now = Instant::now();
    let mut last = pages
        .last_calls
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    // Machines no longer running are forgotten.
    last.retain(|addr, _| by_machine.contains_key(addr.as_str()));
    for m in status["machines"].as_array_mut().into_iter().flatten() {
        let Some(addr) = m["addr"].as_str().map(str::to_string) else {
            continue;
        };
        let Some(source) = by_machine.get(addr.as_str()) else {
            continue;
        };
        let f = &source.families;
        // The program's calls: keepalives and these scrapes are not what a person watches.
        let calls = metrics::user_total(f, "bigmachine_calls");
        let rate = last
            .insert(addr, (now, calls))
            .map(|(then, before)| (calls - before) / now.duration_since(then).as_secs_f64());
        m["calls"] = json!(calls);
        // The rate since the page was last served (by anyone); none the first time, or when
        // the machine's counters started over (a new process at the same address).
        m["calls_per_second"] = json!(rate.filter(|r| r.is_finite() && *r >= 0.0));
        m["calls_in_flight"] = json!(metrics::user_total(f, "bigmachine_calls_in_flight"));
        for (key, family) in [
            ("uptime_seconds", "bigmachine_uptime_seconds"),
            ("processors", "bigmachine_processors"),
            ("rss_bytes", "bigmachine_process_resident_bytes"),
            ("memory_bytes", "bigmachine_host_memory_bytes"),
            (
                "memory_available_bytes",
                "bigmachine_host_memory_available_bytes",
            ),
            ("disk_bytes", "bigmachine_disk_bytes"),
            ("disk_available_bytes", "bigmachine_disk_available_bytes"),
            ("load1", "bigmachine_load1"),
        ] {
            if has(f, family) {
                m[key] = json!(metrics::total(f, family));
            }
        }
    }
    status
}

fn has(families: &[MetricFamily], name: &str) -> bool {
    families.iter().any(|f| f.name == name)
}

fn machine(b: &B, m: &Machine) -> Value {
    let addr = m.addr();
    json!({
        "addr": addr.to_string(),
        "name": m.name(),
        "state": m.state().to_string(),
        "owned": m.owned(),
        "maxprocs": m.maxprocs(),
        "error": m.err().map(|e| e.to_string()),
        "last_panic": m.last_panic().map(|p| p.summary()),
        "keepalive_reply_us": m
            .keepalive_reply_times()
            .iter()
            .map(|d| d.as_micros() as u64)
            .collect::<Vec<_>>(),
        "log": b
            .system()
            .recent_lines(addr)
            .map(|_| format!("/debug/bigmachine/log?machine={addr}")),
    })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => escape(s),
        Value::Null => String::new(),
        other => escape(&other.to_string()),
    }
}

/// Bytes in binary units, one decimal.
fn bytes(v: &Value) -> String {
    let Some(n) = v.as_f64() else {
        return String::new();
    };
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut n = n;
    let mut unit = 0;
    while n >= 1024.0 && unit + 1 < units.len() {
        n /= 1024.0;
        unit += 1;
    }
    format!("{n:.1} {}", units[unit])
}

fn duration(v: &Value) -> String {
    v.as_f64()
        .map(|s| humantime::format_duration(Duration::from_secs(s as u64)).to_string())
        .unwrap_or_default()
}

fn number(v: &Value, decimals: usize) -> String {
    v.as_f64()
        .map(|n| format!("{n:.decimals$}"))
        .unwrap_or_default()
}

fn html(status: &Value) -> String {
    let mut rows = String::new();
    for m in status["machines"].as_array().into_iter().flatten() {
        let keepalive = m["keepalive_reply_us"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_u64)
            .map(|us| format!("{:.1} ms", us as f64 / 1000.0))
            .unwrap_or_default();
        let memory = match (bytes(&m["rss_bytes"]), bytes(&m["memory_available_bytes"])) {
            (rss, _) if rss.is_empty() => String::new(),
            (rss, avail) => format!("{rss} (host {avail} free)"),
        };
        let disk = bytes(&m["disk_available_bytes"]);
        let mut links = format!(
            "<a href=\"/debug/bigmachine/pprof/profile?seconds=10&amp;machine={}\">cpu 10 s</a>",
            text(&m["addr"])
        );
        if let Some(link) = m["log"].as_str() {
            links.push_str(&format!(" · <a href=\"{}\">last lines</a>", escape(link)));
        }
        let log = if m["state"] == "running" {
            links
        } else {
            String::new()
        };
        let state = text(&m["state"]);
        // A panic is shown while the machine runs; once stopped, its error tells the story.
        let error = match (&m["error"], &m["last_panic"]) {
            (Value::Null, Value::String(panic)) => format!("last panic: {}", escape(panic)),
            (error, _) => text(error),
        };
        rows.push_str(&format!(
            "<tr class=\"machine\" data-addr=\"{addr}\" data-state=\"{state}\"><td>{addr}</td>\
             <td>{name}</td><td class=\"state {state}\">{state}</td><td>{uptime}</td>\
             <td>{cores}</td><td>{memory}</td><td>{disk}</td><td>{load}</td><td>{in_flight}</td>\
             <td>{rate}</td><td>{keepalive}</td><td>{log}</td><td class=\"error\">{error}</td></tr>\n",
            addr = text(&m["addr"]),
            name = text(&m["name"]),
            uptime = duration(&m["uptime_seconds"]),
            cores = text(&m["maxprocs"]),
            load = number(&m["load1"], 2),
            in_flight = number(&m["calls_in_flight"], 0),
            rate = number(&m["calls_per_second"], 1),
        ));
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>bigmachine status</title>\
         <meta http-equiv=\"refresh\" content=\"5\">\
         <style>body{{font-family:sans-serif;margin:1.5em}}\
         table{{border-collapse:collapse}}td,th{{padding:3px 12px;text-align:left;vertical-align:top;\
         border-bottom:1px solid #ddd}}th{{background:#f4f4f4}}\
         td.error{{white-space:pre-wrap;font-family:monospace;color:#a00}}\
         td.running{{color:#070}}td.stopped{{color:#a00}}</style>\
         </head><body><h1>bigmachine</h1>\
         <p>system <b>{system}</b>, driver at {driver}, {n} machines. \
         <a href=\"/debug/bigmachine/metrics\">metrics</a> · \
         <a href=\"/debug/bigmachine/vars\">vars</a> · \
         <a href=\"/debug/bigmachine/pprof/profile?seconds=10\">cluster cpu profile (10 s)</a> · \
         <a href=\"/debug/bigmachine/status?format=json\">JSON</a></p>\
         <table id=\"machines\"><tr><th>machine</th><th>name</th><th>state</th><th>uptime</th>\
         <th>cores</th><th>memory</th><th>disk free</th><th>load</th><th>in flight</th>\
         <th>calls/s</th><th>last keepalive</th><th>profile, log</th><th>error</th></tr>\n{rows}</table>\
         </body></html>\n",
        system = text(&status["system"]),
        driver = text(&status["driver"]),
        n = status["machines"].as_array().map_or(0, Vec::len),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_found_by_key() {
        let q = Some("format=json&machine=127.0.0.1:5".to_string());
        assert_eq!(query_value(&q, "machine"), Some("127.0.0.1:5"));
        assert_eq!(query_value(&q, "format"), Some("json"));
        assert_eq!(query_value(&q, "seconds"), None);
        assert_eq!(query_value(&None, "format"), None);
    }

    #[test]
    fn only_ip_addresses_and_localhost_are_hosts() {
        for host in [
            "127.0.0.1:3333",
            "localhost",
            "LOCALHOST:80",
            "[::1]:3333",
            "10.0.0.2",
        ] {
            assert!(ip_or_localhost(host), "{host}");
        }
        for host in [
            "evil.example:3333",
            "evil.example",
            "127.0.0.1.evil.example",
            "[::1",
        ] {
            assert!(!ip_or_localhost(host), "{host}");
        }
    }

    #[test]
    fn bytes_are_shown_in_binary_units() {
        assert_eq!(bytes(&json!(1536.0)), "1.5 KiB");
        assert_eq!(bytes(&json!(3.0 * 1024.0 * 1024.0 * 1024.0)), "3.0 GiB");
        assert_eq!(bytes(&Value::Null), "");
    }
}
