//! Seeing a machine's process end before it is reaped: the one moment its peak memory can
//! still be read, exactly, from the kernel (`waitid` with `WNOWAIT` fills in the resource use
//! of a child that has exited without reaping it). The process is then reaped as usual, by
//! `tokio::process::Child::wait`.
//!
//! The only module of this crate with `unsafe` code (system calls, and a descriptor handed to
//! the runtime), each block saying why it is sound.
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

/// A watch on the end of a child process that has not been reaped yet.
#[derive(Debug)]
pub(crate) struct ExitWatch {
    pid: libc::pid_t,
    fd: AsyncFd<OwnedFd>,
}

impl ExitWatch {
    /// A watch on our child `pid`, which must not have been reaped yet (so the pid is still
    /// its own); `None` where pidfds are missing.
    pub(crate) fn open(pid: u32) -> Option<Self> {
        let pid = libc::pid_t::try_from(pid).ok().filter(|p| *p > 0)?;
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1; it
        // touches no memory of ours.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
        // SAFETY: `fd` was just returned by pidfd_open, is open, and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open, and the same descriptor,
        // until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register(fd) }.ok()?;
        Some(Self { pid, fd })
    }

    /// Waits until the process has exited (without reaping it) and returns its peak resident
    /// size in bytes, if the kernel tells it.
    pub(crate) async fn exited(&self) -> Option<u64> {
        // A pidfd turns readable when its process exits.
        let _ready = self.fd.readable().await.ok()?;
        // SAFETY: `siginfo_t` and `rusage` are plain C structs for which all zero bytes are a
        // valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waitid(2)'s raw system call writes a siginfo_t and a rusage through the two
        // pointers, which point to live values of those types; WNOWAIT leaves the child
        // waitable, so reaping it later is unaffected.
        let waited = unsafe {
            libc::syscall(
                libc::SYS_waitid,
                libc::P_PID,
                self.pid,
                &mut info as *mut libc::siginfo_t,
                libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
                &mut usage as *mut libc::rusage,
            )
        };
        // The kernel reports the peak in KiB.
        let kib = u64::try_from(usage.ru_maxrss).ok().filter(|k| *k > 0);
        (waited == 0).then_some(kib).flatten().map(|kib| kib << 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_peak_memory_of_an_exited_child_is_read_before_it_is_reaped() {
        // A shell that holds 48 MiB in a variable, then exits.
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "x=$(head -c 50331648 /dev/zero | tr '\\0' a); exit 3"])
            .spawn()
            .expect("sh");
        let watch = ExitWatch::open(child.id().expect("pid")).expect("pidfd");
        let peak = watch.exited().await.expect("a peak");
        assert!(peak >= 48 << 20, "a peak of {peak} bytes");
        let status = child.wait().await.expect("reaped after the watch");
        assert_eq!(status.code(), Some(3));
    }
}
