//! What a machine's process left behind in its output: the last lines it printed and the last
//! panic it recorded, for the error that says why it died.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bigmachine_supervisor::PanicRecord;

/// How many of a machine's last lines its death's error quotes.
pub(crate) const LINES: usize = 20;
/// The longest line quoted (longer ones are cut).
const LINE_BYTES: usize = 1024;

/// The record of one machine's process, shared by the readers of its output and its watcher.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tail(Arc<Mutex<Inner>>);

#[derive(Debug, Default)]
struct Inner {
    lines: VecDeque<String>,
    panic: Option<PanicRecord>,
}

/// What a [`Tail`] holds once the process is gone.
#[derive(Debug, Default)]
pub(crate) struct Remains {
    /// The last lines, oldest first.
    pub(crate) lines: Vec<String>,
    /// The last panic recorded.
    pub(crate) panic: Option<PanicRecord>,
}

impl Tail {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a line of output: a panic's record on stderr (`from_stderr`) is kept, and is not
    /// output to forward (`false`); any other line joins the last lines (`true`: forward it).
    pub(crate) fn line(&self, line: &str, from_stderr: bool) -> bool {
        if from_stderr {
            if let Some(record) = PanicRecord::parse(line) {
                self.lock().panic = Some(record);
                return false;
            }
        }
        let kept = bigmachine_core::__internal::shortened(line, LINE_BYTES).into_owned();
        let mut inner = self.lock();
        if inner.lines.len() == LINES {
            inner.lines.pop_front();
        }
        inner.lines.push_back(kept);
        true
    }

    /// What is left.
    pub(crate) fn remains(&self) -> Remains {
        let inner = self.lock();
        Remains {
            lines: inner.lines.iter().cloned().collect(),
            panic: inner.panic.clone(),
        }
    }
}

impl Remains {
    /// The last lines, for an error message: each on its own line, indented.
    pub(crate) fn quoted_lines(&self) -> String {
        self.lines
            .iter()
            .map(|l| format!("\n    | {l}"))
            .collect::<String>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines_and_the_last_panic() {
        let tail = Tail::default();
        for i in 0..LINES + 5 {
            assert!(tail.line(&format!("line {i}"), i % 2 == 0));
        }
        let record = PanicRecord {
            thread: "main".into(),
            location: "src/main.rs:1:1".into(),
            message: "boom".into(),
            backtrace: String::new(),
        };
        assert!(
            tail.line(&record.line(), false),
            "a record on stdout is a line"
        );
        assert!(
            !tail.line(&record.line(), true),
            "a panic record is not forwarded"
        );
        assert!(tail.line(&"x".repeat(5000), true));
        let remains = tail.remains();
        assert_eq!(remains.lines.len(), LINES);
        assert_eq!(remains.lines[0], "line 7");
        assert!(remains.lines[LINES - 1].len() < 1100);
        assert_eq!(remains.panic, Some(record));
        assert!(remains.quoted_lines().starts_with("\n    | line 7"));
    }
}
