//! A checksum of a byte stream that does not depend on how the stream was cut into chunks,
//! shared by the examples and benches that check streams end to end.

/// FNV-1a over the stream's little-endian 64-bit words (the last one zero-padded): a cheap
/// checksum that does not depend on how the stream was cut into chunks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checksum {
    hash: u64,
    partial: [u8; 8],
    filled: usize,
}

impl Checksum {
    pub(crate) fn new() -> Self {
        Self {
            hash: 0xcbf2_9ce4_8422_2325,
            partial: [0; 8],
            filled: 0,
        }
    }

    fn word(&mut self, w: [u8; 8]) {
        self.hash = (self.hash ^ u64::from_le_bytes(w)).wrapping_mul(0x0100_0000_01b3);
    }

    pub(crate) fn update(&mut self, mut bytes: &[u8]) {
        if self.filled > 0 {
            let take = (8 - self.filled).min(bytes.len());
            self.partial[self.filled..self.filled + take].copy_from_slice(&bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled < 8 {
                return;
            }
            self.word(self.partial);
            self.filled = 0;
        }
        let mut words = bytes.chunks_exact(8);
        for w in words.by_ref() {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            self.word(a);
        }
        let rest = words.remainder();
        self.partial = [0; 8];
        self.partial[..rest.len()].copy_from_slice(rest);
        self.filled = rest.len();
    }

    pub(crate) fn finish(mut self) -> u64 {
        if self.filled > 0 {
            // Zero-padded: what a previous word left in the buffer must not count.
            self.partial[self.filled..].fill(0);
            self.word(self.partial);
        }
        self.hash
    }
}
