//! A machine that is its driver's own child process (the local system) ends as soon as its
//! driver does, not a keepalive timeout later: it watches the driver's process through a pidfd
//! (Linux 5.3 and later), or, where there is none, by polling its parent's pid.
//!
//! The driver names itself in `BIGMACHINE_DRIVER_PID`; the watch starts only if that process is
//! this one's parent, so a pid reused by another process is never watched.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;

/// How often the fallback looks at the parent's pid.
const POLL: Duration = Duration::from_millis(100);

/// Completes when the driver `pid` (this process's parent) has exited. Never completes when
/// `pid` is not this process's parent (another system's machine, or a machine whose driver
/// already died: the keepalive watchdog ends those).
pub(crate) async fn driver_exited(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return std::future::pending().await;
    };
    if pid <= 0 {
        return std::future::pending().await;
    }
    // SAFETY: getppid(2) has no preconditions and cannot fail.
    let parent = || unsafe { libc::getppid() };
    if parent() != pid {
        return std::future::pending().await;
    }
    match pidfd(pid) {
        // Opened while the driver was still the parent: the pidfd is the driver's.
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open, and the same descriptor, until
        // the AsyncFd is dropped.
        Some(fd) if parent() == pid => match unsafe { AsyncFd::register(fd) } {
            // A pidfd turns readable when its process exits.
            Ok(fd) => {
                if fd.readable().await.is_err() {
                    // The runtime is shutting down: nothing to tell.
                    std::future::pending::<()>().await;
                }
            }
            Err(_) => poll(pid, parent).await,
        },
        Some(_) => {} // the driver died while the pidfd was opened
        None => poll(pid, parent).await,
    }
}

async fn poll(pid: libc::pid_t, parent: impl Fn() -> libc::pid_t) {
    // Once the driver dies, this process is adopted by another: its parent pid changes.
    while parent() == pid {
        tokio::time::sleep(POLL).await;
    }
}

fn pidfd(pid: libc::pid_t) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the descriptor was just returned by the kernel and is owned by no one else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_process_that_is_not_the_parent_is_not_watched() {
        // This process's own pid is never its parent.
        let watched = driver_exited(std::process::id());
        assert!(
            tokio::time::timeout(Duration::from_millis(300), watched)
                .await
                .is_err(),
            "a non-parent was taken for an exited driver"
        );
    }

    #[tokio::test]
    async fn a_live_parent_is_watched_until_it_exits() {
        // Our parent (the test runner's) outlives this test.
        // SAFETY: getppid(2) has no preconditions.
        let parent = unsafe { libc::getppid() };
        let watched = driver_exited(u32::try_from(parent).unwrap_or(0));
        assert!(
            tokio::time::timeout(Duration::from_millis(300), watched)
                .await
                .is_err(),
            "a live parent was taken for an exited driver"
        );
    }
}
