//! Machine output on its way to the driver's stderr.
//!
//! One thread of its own writes the lines, fed by a bounded channel: a slow stderr (a pipe its
//! reader drains slowly) then holds back the tasks reading the machines' pipes, and through them
//! the machines' own writes, never the runtime's worker threads.

use std::fmt::Display;
use std::io::Write;
use std::sync::OnceLock;

use tokio::sync::{mpsc, oneshot};

/// Lines waiting for the writer thread.
const QUEUE: usize = 1024;

enum Msg {
    Line(String),
    Flush(oneshot::Sender<()>),
}

fn write(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The writer thread's queue; `None` when the thread could not be started (lines are then
/// written where they arrive).
fn queue() -> Option<&'static mpsc::Sender<Msg>> {
    static QUEUE_TX: OnceLock<Option<mpsc::Sender<Msg>>> = OnceLock::new();
    QUEUE_TX
        .get_or_init(|| {
            let (tx, mut rx) = mpsc::channel(QUEUE);
            let spawned = std::thread::Builder::new()
                .name("bigmachine-machine-output".into())
                .spawn(move || {
                    while let Some(msg) = rx.blocking_recv() {
                        match msg {
                            Msg::Line(line) => write(&line),
                            Msg::Flush(done) => {
                                let _ = done.send(());
                            }
                        }
                    }
                });
            match spawned {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::debug!(error = %e, "no machine-output thread; writing in place");
                    None
                }
            }
        })
        .as_ref()
}

/// Queues one line of a machine's output, prefixed, for the driver's stderr; waits while the
/// queue is full.
pub(crate) async fn line(prefix: impl Display, line: &str) {
    let line = format!("{prefix}: {line}");
    match queue() {
        Some(tx) => {
            if let Err(mpsc::error::SendError(Msg::Line(line))) = tx.send(Msg::Line(line)).await {
                write(&line);
            }
        }
        None => write(&line),
    }
}

/// Returns once every line queued before the call is written.
pub(crate) async fn flush() {
    let Some(tx) = queue() else { return };
    let (done, written) = oneshot::channel();
    if tx.send(Msg::Flush(done)).await.is_ok() {
        let _ = written.await;
    }
}
