//! Recognizing a machine that ran out of memory.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

/// Whether a line of a machine's stderr is Rust's report of a failed allocation (printed just
/// before the process aborts).
pub(crate) fn is_allocation_failure(line: &str) -> bool {
    line.starts_with("memory allocation of ") && line.ends_with(" failed")
}

/// Whether the kernel log says its out-of-memory killer killed `pid`. Reads `/dev/kmsg` (which
/// needs privileges); `false` when it cannot be read.
pub(crate) fn killed_by_kernel(pid: u32) -> bool {
    let Ok(mut kmsg) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return false;
    };
    let needle = format!("Killed process {pid} ");
    let mut record = vec![0u8; 8192];
    // Each read returns one record; the loop ends at the end of the buffer (EAGAIN).
    for _ in 0..1_000_000 {
        match kmsg.read(&mut record) {
            Ok(0) => return false,
            Ok(n) => {
                if String::from_utf8_lossy(&record[..n]).contains(&needle) {
                    return true;
                }
            }
            // EPIPE: records were overwritten while reading; keep going.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
            Err(_) => return false,
        }
    }
    false
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
        assert!(!killed_by_kernel(std::process::id()));
    }
}
