//! A machine's panics, recorded for its driver.
//!
//! A machine that is a process of its own installs [`install_hook`]: every panic, before the
//! usual report, is recorded in the process (the Supervisor's `last_panic` answers it; each
//! keepalive reply counts them, so the driver hears of a panic while the machine lives) and
//! written as one line to stderr, [`PANIC_MARKER`] then the [`PanicRecord`] (thread, location,
//! message, backtrace) with its newlines and tabs escaped. A system that reads the machine's
//! output (the local system) takes that line out and keeps the last record, so when the
//! process dies of a panic the driver's error says which panic, where, and with what
//! backtrace, rather than leaving it to scroll past on stderr.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, PoisonError};

/// Starts the line that carries a [`PanicRecord`] on a machine's stderr.
pub const PANIC_MARKER: &str = "bigmachine-panic:\t";

/// The most bytes a record keeps of each field (escaping at most doubles them, so the whole
/// line stays under the 64 KiB a system reads as one line).
const MAX_THREAD: usize = 256;
const MAX_LOCATION: usize = 1 << 10;
const MAX_MESSAGE: usize = 4 << 10;
const MAX_BACKTRACE: usize = 24 << 10;
/// A backtrace is captured (symbols resolved, which takes milliseconds) for at most one panic
/// in this period; the others record where and why only, so a service that panics often (its
/// handlers' panics are caught) does not pay for each.
const BACKTRACE_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// One panic of a machine: where and why, with the backtrace captured at the panic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanicRecord {
    /// The panicking thread's name (`<unnamed>` for a thread without one).
    pub thread: String,
    /// `file:line:column` of the panic.
    pub location: String,
    /// The panic's message (its payload, when that is a string).
    pub message: String,
    /// The backtrace at the panic, as `std::backtrace` prints it.
    pub backtrace: String,
}

impl PanicRecord {
    /// The record of the panic `info`, with a backtrace captured now.
    pub fn of(info: &std::panic::PanicHookInfo<'_>) -> Self {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        let backtrace = if backtrace_due() {
            short(&std::backtrace::Backtrace::force_capture().to_string())
        } else {
            format!("(not captured: another panic's was, less than {BACKTRACE_PERIOD:?} before)")
        };
        Self {
            thread: truncate(
                std::thread::current()
                    .name()
                    .unwrap_or("<unnamed>")
                    .to_string(),
                MAX_THREAD,
            ),
            location: truncate(
                info.location()
                    .map_or_else(|| "an unknown location".to_string(), |l| l.to_string()),
                MAX_LOCATION,
            ),
            message: truncate(message, MAX_MESSAGE),
            backtrace: truncate(backtrace, MAX_BACKTRACE),
        }
    }

    /// Where and why, on one line: `thread 'T' panicked at LOCATION: MESSAGE`.
    pub fn summary(&self) -> String {
        format!(
            "thread '{}' panicked at {}: {}",
            self.thread, self.location, self.message
        )
    }

    /// The backtrace's first lines, at most `max` bytes of them (cut at a line's end).
    pub fn backtrace_head(&self, max: usize) -> String {
        let mut head = String::new();
        for line in self.backtrace.lines() {
            if head.len() + line.len() + 1 > max {
                head.push('…');
                break;
            }
            head.push_str(line);
            head.push('\n');
        }
        head.trim_end().to_string()
    }

    /// The record as one line: [`PANIC_MARKER`], then its fields, escaped, separated by tabs.
    pub fn line(&self) -> String {
        let fields = [&self.thread, &self.location, &self.message, &self.backtrace];
        let mut line = PANIC_MARKER.to_string();
        for (i, field) in fields.into_iter().enumerate() {
            if i > 0 {
                line.push('\t');
            }
            escape(field, &mut line);
        }
        line
    }

    /// The record a line carries, if it is one ([`PanicRecord::line`]).
    pub fn parse(line: &str) -> Option<Self> {
        let fields: Vec<String> = line
            .strip_prefix(PANIC_MARKER)?
            .split('\t')
            .map(unescape)
            .collect();
        let [thread, location, message, backtrace] = <[String; 4]>::try_from(fields).ok()?;
        Some(Self {
            thread,
            location,
            message,
            backtrace,
        })
    }
}

impl fmt::Display for PanicRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\nbacktrace:\n{}",
            self.summary(),
            self.backtrace.trim_end()
        )
    }
}

/// Panics recorded by this process's hook (read by keepalives, without a lock).
static PANICS: AtomicU64 = AtomicU64::new(0);
/// The last of them, with the count it made.
static LAST: Mutex<Option<(u64, PanicRecord)>> = Mutex::new(None);

/// How many panics this process recorded ([`install_hook`]).
pub(crate) fn panics() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

/// The last panic this process recorded, and how many it had recorded with it.
pub(crate) fn last_panic() -> Option<(u64, PanicRecord)> {
    LAST.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Installs (once per process) a panic hook that records each panic (the Supervisor's
/// `last_panic` answers the last), writes its [`PanicRecord::line`] to stderr, then reports the
/// panic as the hook before it did. Write errors are ignored (the driver may be gone).
pub fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let before = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let record = PanicRecord::of(info);
            let line = record.line();
            {
                // The record keeps its count, so that one read names this panic.
                let mut last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
                let count = PANICS.fetch_add(1, Ordering::Relaxed) + 1;
                *last = Some((count, record));
            }
            let _ = writeln!(std::io::stderr().lock(), "{line}");
            before(info);
        }));
    });
}

/// The frames of `full` (a backtrace as `std` prints it) from the code that panicked on: the
/// frames of the hook and of the panic machinery before it, and of the thread's start after
/// `__rust_begin_short_backtrace`, are left out (as Rust's own short backtraces do). A
/// backtrace without those markers is kept whole.
fn short(full: &str) -> String {
    let mut frames: Vec<Vec<&str>> = Vec::new();
    for line in full.lines() {
        let starts_frame = line
            .trim_start()
            .split_once(": ")
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        match frames.last_mut() {
            Some(frame) if !starts_frame => frame.push(line),
            _ => frames.push(vec![line]),
        }
    }
    fn symbol<'a>(frame: &[&'a str]) -> &'a str {
        frame
            .first()
            .and_then(|l| l.trim_start().split_once(": "))
            .map_or("", |(_, symbol)| symbol)
    }
    let first = frames
        .iter()
        .rposition(|f| {
            let s = symbol(f);
            s.starts_with("std::panicking::")
                || s.starts_with("core::panicking::")
                || s.starts_with("std::panic::panic_any")
                || s.starts_with("rust_begin_unwind")
                || s.contains("__rust_end_short_backtrace")
        })
        .map_or(0, |i| i + 1);
    let end = frames
        .iter()
        .position(|f| symbol(f).contains("__rust_begin_short_backtrace"))
        .unwrap_or(frames.len());
    if first >= end {
        return full.to_string();
    }
    frames[first..end]
        .iter()
        .flatten()
        .copied()
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether this panic gets a backtrace (see [`BACKTRACE_PERIOD`]).
fn backtrace_due() -> bool {
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let now = std::time::Instant::now();
    if last.is_some_and(|t| now.duration_since(t) < BACKTRACE_PERIOD) {
        return false;
    }
    *last = Some(now);
    true
}

fn truncate(s: String, max: usize) -> String {
    bigmachine_core::__internal::shortened(&s, max).into_owned()
}

fn escape(field: &str, out: &mut String) {
    for c in field.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
}

fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_its_line() {
        let record = PanicRecord {
            thread: "worker\t1".into(),
            location: "src/lib.rs:10:5".into(),
            message: "bad \\ input\nsecond line".into(),
            backtrace: "   0: main\n             at src/main.rs:3:1\n".into(),
        };
        let line = record.line();
        assert!(!line.contains('\n'), "{line}");
        assert_eq!(PanicRecord::parse(&line), Some(record.clone()));
        assert_eq!(
            record.summary(),
            "thread 'worker\t1' panicked at src/lib.rs:10:5: bad \\ input\nsecond line"
        );
        assert_eq!(
            record.backtrace_head(100),
            "   0: main\n             at src/main.rs:3:1"
        );
        assert_eq!(record.backtrace_head(20), "   0: main\n…");
        assert_eq!(PanicRecord::parse("thread 'main' panicked"), None);
        assert_eq!(PanicRecord::parse(&format!("{PANIC_MARKER}a\tb")), None);
    }

    #[test]
    fn backtraces_start_at_the_code_that_panicked() {
        let full = "   0: bigmachine_supervisor::panic::PanicRecord::of
             at ./supervisor/src/panic.rs:51:13
   1: std::panicking::panic_with_hook
   2: std::sys::backtrace::__rust_end_short_backtrace
   3: std::panic::panic_any
             at /rustc/library/std/src/panic.rs:260:5
   4: app::work::{{closure}}
             at ./src/work.rs:100:28
   5: app::main
   6: std::sys::backtrace::__rust_begin_short_backtrace
   7: start_thread";
        assert_eq!(
            short(full),
            "   4: app::work::{{closure}}\n             at ./src/work.rs:100:28\n   5: app::main"
        );
        assert_eq!(short("no frames here"), "no frames here");
    }

    #[test]
    fn long_fields_are_cut_on_a_character_boundary() {
        let cut = truncate("é".repeat(10), 5);
        assert_eq!(cut, "éé …");
    }
}
