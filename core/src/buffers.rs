//! Reuse of large payload buffers.
//!
//! Writing into freshly allocated memory costs a page fault per 4 KiB page, several times the
//! cost of writing into memory already mapped. Large archives are therefore encoded into, and
//! received into, buffers kept here once their last user drops them: a process moving many
//! 64 MiB payloads touches fresh memory once, not once per payload (see `BENCHMARKS.md` for what
//! this did to the 64 MiB argument).
//!
//! Only buffers of at least [`MIN_POOLED`] bytes are kept (the allocator serves small ones well),
//! and at most [`pool_limit`] bytes in all ([`DEFAULT_POOL_LIMIT`] unless
//! [`set_pool_limit`] says otherwise; 0 turns the pool off). Receiving never takes a buffer larger
//! than what is already pooled on a peer's say-so: memory still grows only with the data that
//! arrives.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

use rkyv::ser::{Positional, Writer};
use rkyv::util::AlignedVec;

/// The alignment of payload buffers (rkyv reads archives in place only from aligned memory).
pub(crate) const PAYLOAD_ALIGN: usize = 16;

/// An aligned buffer holding one archive.
pub type Payload = AlignedVec<PAYLOAD_ALIGN>;

/// Buffers smaller than this are left to the allocator.
pub(crate) const MIN_POOLED: usize = 1 << 20;

/// The room a writer starts with: most call arguments and replies fit.
const SMALL: usize = 256;

/// The default bound on the bytes of free buffers kept for reuse (256 MiB).
pub const DEFAULT_POOL_LIMIT: usize = 256 << 20;

static LIMIT: AtomicUsize = AtomicUsize::new(DEFAULT_POOL_LIMIT);

#[derive(Default)]
struct Pool {
    free: Vec<Payload>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: Vec::new(),
    bytes: 0,
});

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The bound on the bytes of free payload buffers this process keeps for reuse.
pub fn pool_limit() -> usize {
    LIMIT.load(Relaxed)
}

/// Sets the bound on the bytes of free payload buffers this process keeps for reuse (0 turns
/// the pool off), freeing what exceeds it now.
pub fn set_pool_limit(bytes: usize) {
    LIMIT.store(bytes, Relaxed);
    let mut p = pool();
    evict(&mut p, bytes);
}

/// Bytes of free payload buffers this process holds for reuse now.
pub fn pooled_bytes() -> usize {
    pool().bytes
}

fn evict(p: &mut Pool, limit: usize) {
    while p.bytes > limit {
        // Drop the smallest first: large buffers are the expensive ones to fault in again.
        let Some((i, _)) = p.free.iter().enumerate().min_by_key(|(_, b)| b.capacity()) else {
            break;
        };
        let buf = p.free.swap_remove(i);
        p.bytes -= buf.capacity();
    }
}

/// A pooled buffer with a capacity of at least `len` bytes, if one is free (the smallest such).
pub(crate) fn take(len: usize) -> Option<Payload> {
    if len < MIN_POOLED {
        return None;
    }
    let mut p = pool();
    let (i, _) = p
        .free
        .iter()
        .enumerate()
        .filter(|(_, b)| b.capacity() >= len)
        .min_by_key(|(_, b)| b.capacity())?;
    let buf = p.free.swap_remove(i);
    p.bytes -= buf.capacity();
    Some(buf)
}

/// Hands a buffer back for reuse (or frees it, when small or when the pool is full).
pub(crate) fn give(mut buf: Payload) {
    let cap = buf.capacity();
    let limit = pool_limit();
    if cap < MIN_POOLED || cap > limit {
        return;
    }
    buf.clear();
    let mut p = pool();
    p.bytes += cap;
    p.free.push(buf);
    evict(&mut p, limit);
}

/// A payload that goes back to the pool when the transport (or whoever holds it) drops it.
#[derive(Debug)]
pub(crate) struct Pooled(pub(crate) Payload);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.0));
    }
}

/// The writer archives are encoded into: a plain buffer for small archives that moves into a
/// pooled one (when one is free) as soon as the archive outgrows 1 MiB.
#[derive(Debug)]
pub struct PayloadWriter {
    buf: Payload,
}

impl PayloadWriter {
    /// An empty writer, with room for a small archive (so small calls allocate once).
    pub fn new() -> Self {
        Self {
            buf: Payload::with_capacity(SMALL),
        }
    }

    /// The encoded archive.
    pub fn into_payload(self) -> Payload {
        self.buf
    }

    fn reserve(&mut self, extra: usize) {
        let need = self.buf.len() + extra;
        if need <= self.buf.capacity() || need < MIN_POOLED {
            return;
        }
        // Grow geometrically, like a Vec, but into reused memory when there is some.
        let want = need.max(self.buf.capacity() * 2);
        if let Some(mut bigger) = take(want).or_else(|| take(need)) {
            bigger.extend_from_slice(&self.buf);
            give(std::mem::replace(&mut self.buf, bigger));
        }
    }
}

impl Default for PayloadWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Positional for PayloadWriter {
    fn pos(&self) -> usize {
        self.buf.len()
    }
}

impl<E> Writer<E> for PayloadWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.reserve(bytes.len());
        self.buf.extend_from_slice(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test touches the process-wide pool, so the assertions cannot race each other.
    #[test]
    fn large_buffers_are_reused_small_ones_are_not() {
        set_pool_limit(DEFAULT_POOL_LIMIT);
        let mut big = Payload::with_capacity(4 * MIN_POOLED);
        big.extend_from_slice(&[1, 2, 3]);
        let ptr = big.as_ptr();
        give(big);
        give(Payload::with_capacity(16));
        assert_eq!(pooled_bytes(), 4 * MIN_POOLED);

        // Too large a request finds nothing; a fitting one gets the same memory, emptied.
        assert!(take(8 * MIN_POOLED).is_none());
        let again = take(2 * MIN_POOLED).expect("a pooled buffer");
        assert_eq!((again.as_ptr(), again.len()), (ptr, 0));
        assert_eq!(pooled_bytes(), 0);

        // Dropping a `Pooled` returns it; a writer outgrowing the threshold takes it again.
        drop(Pooled(again));
        let mut w = PayloadWriter::new();
        Writer::<rkyv::rancor::Error>::write(&mut w, &vec![7u8; MIN_POOLED + 1]).expect("write");
        let out = w.into_payload();
        assert_eq!(out.as_ptr(), ptr);
        assert_eq!(out.len(), MIN_POOLED + 1);

        // The limit bounds what is kept.
        set_pool_limit(MIN_POOLED);
        give(out);
        assert_eq!(pooled_bytes(), 0, "a buffer above the limit is freed");
        set_pool_limit(DEFAULT_POOL_LIMIT);
    }
}
