//! The io_uring side of [`files`](super): one thread per open file, owning a ring with up to
//! [`DEPTH`] operations in flight. Every buffer the kernel may still touch is owned by a
//! [`Ring`], which waits for its operations' completions before it lets go of them (on every path,
//! errors and drops included).

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use bytes::Bytes;
use io_uring::{opcode, types, IoUring};
use tokio::sync::{mpsc, oneshot};

use super::{io_error, CHUNK, DEPTH};

use crate::error::Result;

/// What a [`super::FileWriter`] sends its thread.
#[derive(Debug)]
pub(crate) enum Msg {
    /// Bytes to append.
    Chunk(Bytes),
    /// No more chunks: wait for the writes (and an fsync if `sync`), then answer.
    Finish { sync: bool },
}

/// Whether a ring can be set up here (a seccomp filter, a container runtime or
/// `kernel.io_uring_disabled` may forbid it).
pub(crate) fn available() -> bool {
    let Ok(ring) = IoUring::new(2) else {
        return false;
    };
    // A kernel may set up rings yet lack the operations used here (before 5.6), or refuse
    // to say (probing came in 5.6 too): either way, no.
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe).is_ok()
        && probe.is_supported(opcode::Read::CODE)
        && probe.is_supported(opcode::Write::CODE)
}

/// One operation's buffer and where it stands: `done` of `len` bytes transferred at `offset`.
struct Op<B> {
    buf: B,
    offset: u64,
    done: usize,
    len: usize,
    finished: bool,
}

/// A ring and the operations in flight on it, in submission order; `first` is the id (the
/// ring's user data) of the front one.
struct Ring<B> {
    ring: IoUring,
    ops: VecDeque<Op<B>>,
    first: u64,
    in_flight: usize,
}

impl<B> Ring<B> {
    fn new() -> io::Result<Self> {
        Ok(Self {
            ring: IoUring::new((DEPTH * 2) as u32)?,
            ops: VecDeque::with_capacity(DEPTH),
            first: 0,
            in_flight: 0,
        })
    }

    /// Submits `entry` for the operation of id `id` (already in `ops`).
    fn push(&mut self, entry: io_uring::squeue::Entry, id: u64) -> io::Result<()> {
        // SAFETY: the entry's buffer belongs to an operation in `self.ops`, which is neither
        // dropped nor moved in memory (the buffers are heap allocations owned by `Op`) until the
        // kernel completes the entry: `Ring::drop` and `wait` account for every entry pushed.
        unsafe { self.ring.submission().push(&entry.user_data(id)) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        self.in_flight += 1;
        Ok(())
    }

    /// Waits for at least one completion; returns the completions as (id, result).
    fn wait(&mut self) -> io::Result<Vec<(u64, i32)>> {
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let done: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        self.in_flight -= done.len();
        Ok(done)
    }

    fn op(&mut self, id: u64) -> Option<&mut Op<B>> {
        let i = id.checked_sub(self.first)?;
        self.ops.get_mut(usize::try_from(i).ok()?)
    }
}

impl<B> Drop for Ring<B> {
    fn drop(&mut self) {
        while self.in_flight > 0 {
            if self.wait().is_err() {
                // The kernel may still write into these buffers: never free them.
                std::mem::forget(std::mem::take(&mut self.ops));
                return;
            }
        }
    }
}

/// Starts the thread that reads `path` into `tx`, ahead of the reader by up to [`DEPTH`]
/// chunks in flight plus the channel's room. A file that is not a regular file (a pipe, a
/// device: offsets mean nothing to it) is read in order by plain reads.
pub(crate) fn spawn_reader(path: PathBuf, tx: mpsc::Sender<Result<Bytes>>) {
    let spawned = std::thread::Builder::new()
        .name("bigmachine-file-read".into())
        .spawn({
            let (path, tx) = (path.clone(), tx.clone());
            move || {
                let read = std::fs::File::open(&path).and_then(|file| {
                    if !file.metadata()?.is_file() {
                        return read_in_order(file, &tx);
                    }
                    read_file(&file, Ring::new()?, &tx)
                });
                if let Err(e) = read {
                    let _ = tx.blocking_send(Err(io_error(&path, e)));
                }
            }
        });
    if let Err(e) = spawned {
        let _ = tx.try_send(Err(io_error(&path, e)));
    }
}

/// Reads `file` (a pipe or a device) into `tx` by plain reads, each read's bytes a chunk (a
/// pipe's writer is not kept waiting for a full chunk).
fn read_in_order(file: std::fs::File, tx: &mpsc::Sender<Result<Bytes>>) -> io::Result<()> {
    use std::io::Read;
    let mut file = file;
    loop {
        let mut buf = vec![0u8; 64 << 10];
        let n = loop {
            match file.read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        buf.truncate(n);
        if buf.is_empty() || tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
            return Ok(());
        }
    }
}

/// Reads the file into `tx` through `ring` until its end (a read of 0 bytes), the reader going
/// away, or an error.
fn read_file(
    file: &std::fs::File,
    mut ring: Ring<Vec<u8>>,
    tx: &mpsc::Sender<Result<Bytes>>,
) -> io::Result<()> {
    let fd = types::Fd(file.as_raw_fd());
    let mut next = 0u64;
    let mut end = false;
    let submit = |ring: &mut Ring<Vec<u8>>, id: u64| -> io::Result<()> {
        let entry = {
            let Some(op) = ring.op(id) else {
                return Err(io::Error::other("io_uring: unknown operation"));
            };
            let at = op.buf.spare_capacity_mut().as_mut_ptr().cast::<u8>();
            opcode::Read::new(fd, at, (op.len - op.done) as u32)
                .offset(op.offset + op.done as u64)
                .build()
        };
        ring.push(entry, id)
    };
    loop {
        // Hand over the chunks read, in order.
        while ring.ops.front().is_some_and(|op| op.finished) {
            let Some(op) = ring.ops.pop_front() else {
                break;
            };
            ring.first += 1;
            if !op.buf.is_empty() && tx.blocking_send(Ok(Bytes::from(op.buf))).is_err() {
                return Ok(()); // the reader went away
            }
        }
        while !end && ring.ops.len() < DEPTH {
            let id = ring.first + ring.ops.len() as u64;
            ring.ops.push_back(Op {
                buf: Vec::with_capacity(CHUNK),
                offset: next,
                done: 0,
                len: CHUNK,
                finished: false,
            });
            next += CHUNK as u64;
            submit(&mut ring, id)?;
        }
        if ring.ops.is_empty() {
            return Ok(());
        }
        for (id, result) in ring.wait()? {
            let Some(op) = ring.op(id) else {
                continue;
            };
            if result < 0 {
                return Err(io::Error::from_raw_os_error(-result));
            }
            let n = result as usize;
            // SAFETY: the kernel wrote `n` bytes at the end of the buffer's initialized part
            // (`done` bytes), within its capacity (`len - done` were asked for).
            unsafe { op.buf.set_len(op.done + n) };
            op.done += n;
            if n == 0 || op.done == op.len {
                op.finished = true;
                end |= n == 0;
            } else {
                submit(&mut ring, id)?; // a short read: the rest of the chunk
            }
        }
    }
}

/// Starts the thread that writes `file` from what a [`super::FileWriter`] sends; it answers on
/// the returned receiver when finished or failed.
pub(crate) fn spawn_writer(
    file: std::fs::File,
) -> io::Result<(mpsc::Sender<Msg>, oneshot::Receiver<io::Result<u64>>)> {
    // Set up here, so that a file io_uring cannot serve fails when created.
    let ring = Ring::new()?;
    let (tx, rx) = mpsc::channel(DEPTH);
    let (done_tx, done) = oneshot::channel();
    std::thread::Builder::new()
        .name("bigmachine-file-write".into())
        .spawn(move || {
            let _ = done_tx.send(write_file(&file, ring, rx));
        })?;
    Ok((tx, done))
}

fn write_file(
    file: &std::fs::File,
    mut ring: Ring<Bytes>,
    mut rx: mpsc::Receiver<Msg>,
) -> io::Result<u64> {
    let fd = types::Fd(file.as_raw_fd());
    let mut offset = 0u64;
    let submit = |ring: &mut Ring<Bytes>, id: u64| -> io::Result<()> {
        let entry = {
            let Some(op) = ring.op(id) else {
                return Err(io::Error::other("io_uring: unknown operation"));
            };
            let rest = &op.buf[op.done..];
            // At most 1 GiB per write; a short write sends the rest.
            opcode::Write::new(fd, rest.as_ptr(), rest.len().min(1 << 30) as u32)
                .offset(op.offset + op.done as u64)
                .build()
        };
        ring.push(entry, id)
    };
    let mut finish = None;
    loop {
        // Take chunks while there is room; wait for one only when nothing is in flight.
        while finish.is_none() && ring.ops.len() < DEPTH {
            let msg = if ring.ops.is_empty() {
                rx.blocking_recv()
            } else {
                rx.try_recv().ok()
            };
            match msg {
                Some(Msg::Chunk(buf)) if buf.is_empty() => {}
                Some(Msg::Chunk(buf)) => {
                    let id = ring.first + ring.ops.len() as u64;
                    let len = buf.len();
                    ring.ops.push_back(Op {
                        buf,
                        offset,
                        done: 0,
                        len,
                        finished: false,
                    });
                    offset += len as u64;
                    submit(&mut ring, id)?;
                }
                Some(Msg::Finish { sync }) => finish = Some(sync),
                None if ring.ops.is_empty() => {
                    return Err(io::Error::other("the file's writer was dropped unfinished"))
                }
                None => break,
            }
        }
        while ring.ops.front().is_some_and(|op| op.finished) {
            ring.ops.pop_front();
            ring.first += 1;
        }
        if ring.ops.is_empty() {
            if let Some(sync) = finish {
                if sync {
                    file.sync_all()?;
                }
                return Ok(offset);
            }
            continue;
        }
        for (id, result) in ring.wait()? {
            let Some(op) = ring.op(id) else {
                continue;
            };
            if result < 0 {
                return Err(io::Error::from_raw_os_error(-result));
            }
            if result == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "wrote 0 bytes"));
            }
            op.done += result as usize;
            if op.done == op.len {
                op.finished = true;
            } else {
                submit(&mut ring, id)?; // a short write: the rest of the chunk
            }
        }
    }
}
