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

    /// The kernel's report that the out-of-memory killer killed `pid` since the log was
    /// opened (with the memory the process held), if it did. Blocking: call it off the async
    /// workers.
    pub(crate) fn killed(mut self, pid: u32) -> Option<String> {
        let mut record = vec![0u8; 8192];
        // Each read returns one record; the loop ends at the end of the log (EAGAIN).
        for _ in 0..1_000_000 {
            match self.0.read(&mut record) {
                Ok(0) => return None,
                Ok(n) => {
                    if let Some(report) = kill_report(&String::from_utf8_lossy(&record[..n]), pid) {
                        return Some(report);
                    }
                }
                // EPIPE: records were overwritten while the machine ran; read on from the
                // oldest left.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
                Err(_) => return None,
            }
        }
        None
    }
}

/// The message of a `/dev/kmsg` record (`priority,sequence,microseconds,flags;message`) that
/// says the out-of-memory killer killed `pid`, from `Killed process` on.
fn kill_report(record: &str, pid: u32) -> Option<String> {
    let (_, message) = record.split_once(';')?;
    let at = message.find(&format!("Killed process {pid} "))?;
    Some(message[at..].trim_end().to_string())
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
            assert_eq!(log.killed(std::process::id()), None);
        }
    }

    #[test]
    fn only_the_pid_named_counts() {
        let record = "3,1234,5000000,-;Out of memory: Killed process 4242 (bigoom) total-vm:1kB\n";
        assert_eq!(
            kill_report(record, 4242).as_deref(),
            Some("Killed process 4242 (bigoom) total-vm:1kB")
        );
        assert_eq!(kill_report(record, 424), None, "another pid's prefix");
        assert_eq!(kill_report("garbage", 4242), None);
    }
}
