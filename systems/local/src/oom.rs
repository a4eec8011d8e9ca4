//! Recognizing a machine that ran out of memory.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

/// Whether a line of a machine's stderr is Rust's report of a failed allocation (printed just
/// before the process aborts).
pub(crate) fn is_allocation_failure(line: &str) -> bool {
    line.starts_with("memory allocation of ") && line.ends_with(" failed")
}

/// Microseconds on the clock the kernel log stamps its records with (the monotonic clock).
pub(crate) fn now_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes the timespec it is given, which lives on this stack.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1000
}

/// Whether a `/dev/kmsg` record (`priority,sequence,microseconds,flags;message`) says the
/// out-of-memory killer killed `pid`, at or after `since_us` (so an old record of an earlier
/// process with the same pid is not taken for it).
fn says_killed(record: &str, pid: u32, since_us: u64) -> bool {
    let Some((head, message)) = record.split_once(';') else {
        return false;
    };
    let at: Option<u64> = head.split(',').nth(2).and_then(|t| t.parse().ok());
    at.is_some_and(|at| at >= since_us) && message.contains(&format!("Killed process {pid} "))
}

/// Whether the kernel log says its out-of-memory killer killed `pid` since `since_us` (see
/// [`now_us`]). Reads `/dev/kmsg` (which needs privileges), blocking: call it off the async
/// workers. `false` when the log cannot be read.
pub(crate) fn killed_by_kernel(pid: u32, since_us: u64) -> bool {
    let Ok(mut kmsg) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return false;
    };
    let mut record = vec![0u8; 8192];
    // Each read returns one record; the loop ends at the end of the buffer (EAGAIN).
    for _ in 0..1_000_000 {
        match kmsg.read(&mut record) {
            Ok(0) => return false,
            Ok(n) => {
                if says_killed(&String::from_utf8_lossy(&record[..n]), pid, since_us) {
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
        assert!(!killed_by_kernel(std::process::id(), 0));
    }

    #[test]
    fn only_a_record_since_the_process_started_counts() {
        let record = "3,1234,5000000,-;Out of memory: Killed process 4242 (bigoom) total-vm:1kB";
        assert!(says_killed(record, 4242, 4_000_000));
        assert!(
            !says_killed(record, 4242, 6_000_000),
            "a stale record of a reused pid"
        );
        assert!(!says_killed(record, 424, 0), "another pid's prefix");
        assert!(!says_killed("garbage", 4242, 0));
    }

    #[test]
    fn the_clock_moves_forward() {
        let a = now_us();
        assert!(a > 0 && now_us() >= a);
    }
}
