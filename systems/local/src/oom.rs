//! Recognizing a machine that ran out of memory.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

/// Whether a line of a machine's stderr is Rust's report of a failed allocation (printed just
/// before the process aborts).
pub(crate) fn is_allocation_failure(line: &str) -> bool {
    line.starts_with("memory allocation of ") && line.ends_with(" failed")
}

/// The kernel log (`/dev/kmsg`, which needs privileges) from a point on: opened when a machine
/// starts, it is read when the machine's process was killed, and holds only what the kernel
/// logged meanwhile, so an old record of an earlier process with the same pid is never taken
/// for it. (Sequence, not time: the log's clock drifts from the system's.)
#[derive(Debug)]
pub(crate) struct KernelLog(std::fs::File);

impl KernelLog {
    /// The log from now on; `None` when it cannot be read.
    pub(crate) fn from_now() -> Option<Self> {
        use std::io::{Seek, SeekFrom};
        let mut kmsg = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .ok()?;
        kmsg.seek(SeekFrom::End(0)).ok()?;
        Some(Self(kmsg))
    }

    /// Whether the out-of-memory killer killed `pid` since the log was opened. Blocking: call
    /// it off the async workers.
    pub(crate) fn killed(mut self, pid: u32) -> bool {
        let mut record = vec![0u8; 8192];
        // Each read returns one record; the loop ends at the end of the log (EAGAIN).
        for _ in 0..1_000_000 {
            match self.0.read(&mut record) {
                Ok(0) => return false,
                Ok(n) => {
                    if says_killed(&String::from_utf8_lossy(&record[..n]), pid) {
                        return true;
                    }
                }
                // EPIPE: records were overwritten while the machine ran; read on from the
                // oldest left.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
                Err(_) => return false,
            }
        }
        false
    }
}

/// Whether a `/dev/kmsg` record (`priority,sequence,microseconds,flags;message`) says the
/// out-of-memory killer killed `pid`.
fn says_killed(record: &str, pid: u32) -> bool {
    record
        .split_once(';')
        .is_some_and(|(_, message)| message.contains(&format!("Killed process {pid} ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_rust_allocation_failures() {
        assert!(is_allocation_failure(
            "memory allocation of 1073741824 bytes failed"
        ));
        assert!(!is_allocation_failure("allocated 1 GiB"));
    }

    #[test]
    fn a_live_pid_was_not_oom_killed() {
        if let Some(log) = KernelLog::from_now() {
            assert!(!log.killed(std::process::id()));
        }
    }

    #[test]
    fn only_the_pid_named_counts() {
        let record = "3,1234,5000000,-;Out of memory: Killed process 4242 (bigoom) total-vm:1kB";
        assert!(says_killed(record, 4242));
        assert!(!says_killed(record, 424), "another pid's prefix");
        assert!(!says_killed("garbage", 4242));
    }
}
