//! [`Blob`]: bytes a method replies with as they are.

use bytes::Bytes;

/// Bytes a method replies with as they are, without a copy: the buffer (shared, so a slice of
/// a cache or of a file read once serves many calls) goes to the transport, followed by 8 to 11
/// bytes that make it the archive of a `Vec<u8>`. The caller asks for `Vec<u8>`, or reads the
/// bytes in place as [`Archived<Vec<u8>>`](crate::Archived).
///
/// A method returning `Vec<u8>` gets the same treatment when the vector is 64 KiB or longer;
/// `Blob` serves bytes the method does not own outright. A blob is at most 2 GiB − 8 bytes long
/// (rkyv's 32-bit offsets), and at most the caller's payload limit.
///
/// ```
/// use bigmachine_core::{Blob, Context, Result};
/// # struct Cache { page: bytes::Bytes }
/// # impl Cache {
/// // In a `#[service]` impl:
/// async fn page(&self, _ctx: &Context, _n: u64) -> Result<Blob> {
///     Ok(Blob::from(self.page.clone()))
/// }
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blob(pub Bytes);

impl From<Bytes> for Blob {
    fn from(bytes: Bytes) -> Self {
        Self(bytes)
    }
}

impl From<Vec<u8>> for Blob {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes.into())
    }
}

impl From<Blob> for Bytes {
    fn from(blob: Blob) -> Self {
        blob.0
    }
}
