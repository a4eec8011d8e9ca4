//! The driver's debug pages: `/debug/bigmachine/status`, the state of every machine, as a page
//! a person reads or, with `?format=json` (or `Accept: application/json`), as JSON.
//!
//! Served when `--bigm.debug-addr` (or `BIGM_DEBUG_ADDR`) names a port (of loopback: `3333`)
//! or an address; an address beyond loopback is served with a warning. The server runs on a thread of its own and only reads machine state.

use std::net::SocketAddr;

use bigmachine_core::{Error, Kind, Machine, Result, B};
use serde_json::{json, Value};

/// Serves the debug pages of `b` at `addr` (port 0 picks one); returns the bound address.
pub fn serve(b: B, addr: SocketAddr) -> Result<SocketAddr> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| Error::new(Kind::Other, format!("debug server at {addr}: {e}")))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| Error::new(Kind::Other, "debug server has no IP address"))?;
    std::thread::Builder::new()
        .name("bigmachine-debug".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let response = respond(&b, &request);
                if let Err(e) = request.respond(response) {
                    tracing::debug!(error = %e, "debug response not delivered");
                }
            }
        })
        .map_err(|e| Error::new(Kind::Other, format!("debug server thread: {e}")))?;
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

type Response = tiny_http::Response<std::io::Cursor<Vec<u8>>>;

fn respond(b: &B, request: &tiny_http::Request) -> Response {
    let (path, query) = request.url().split_once('?').unwrap_or((request.url(), ""));
    if path.trim_end_matches('/') != "/debug/bigmachine/status" {
        return tiny_http::Response::from_string("not found\n").with_status_code(404);
    }
    let wants_json = query.split('&').any(|kv| kv == "format=json")
        || request
            .headers()
            .iter()
            .any(|h| h.field.equiv("Accept") && h.value.as_str().contains("application/json"));
    let status = status(b);
    let (body, content_type) = if wants_json {
        (status.to_string(), "application/json")
    } else {
        (html(&status), "text/html; charset=utf-8")
    };
    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes());
    let response = tiny_http::Response::from_string(body);
    match header {
        Ok(h) => response.with_header(h),
        Err(()) => response,
    }
}

fn machine(m: &Machine) -> Value {
    json!({
        "addr": m.addr().to_string(),
        "name": m.name(),
        "state": m.state().to_string(),
        "owned": m.owned(),
        "maxprocs": m.maxprocs(),
        "error": m.err().map(|e| e.to_string()),
        "keepalive_reply_us": m
            .keepalive_reply_times()
            .iter()
            .map(|d| d.as_micros() as u64)
            .collect::<Vec<_>>(),
    })
}

/// The status of `b` and its machines, as JSON.
pub fn status(b: &B) -> Value {
    json!({
        "system": b.system().name(),
        "driver": b.addr().ok().map(|a| a.to_string()),
        "machines": b.machines().iter().map(machine).collect::<Vec<_>>(),
    })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn html(status: &Value) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => escape(s),
        Value::Null => String::new(),
        other => escape(&other.to_string()),
    };
    let mut rows = String::new();
    for m in status["machines"].as_array().into_iter().flatten() {
        let latest = m["keepalive_reply_us"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_u64)
            .map(|us| format!("{:.1} ms", us as f64 / 1000.0))
            .unwrap_or_default();
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{latest}</td><td class=\"error\">{}</td></tr>\n",
            text(&m["addr"]),
            text(&m["name"]),
            text(&m["state"]),
            text(&m["maxprocs"]),
            text(&m["error"]),
        ));
    }
    format!(
        "<!doctype html><html><head><title>bigmachine status</title>\
         <style>body{{font-family:sans-serif}}td,th{{padding:2px 12px;text-align:left;vertical-align:top}}\
         td.error{{white-space:pre-wrap;font-family:monospace}}</style>\
         </head><body><h1>bigmachine</h1><p>system {}, driver at {}</p>\
         <table><tr><th>machine</th><th>name</th><th>state</th><th>cores</th><th>last keepalive</th>\
         <th>error</th></tr>\n{rows}</table></body></html>\n",
        text(&status["system"]),
        text(&status["driver"]),
    )
}
