//! [`Blob`]: bytes a method replies with as they are.

use bytes::Bytes;

use crate::buffers::{Payload, Pooled};
use crate::codec::{type_tag, Archived, FromPayload};
use crate::error::Result;

/// Bytes a method replies with as they are, without a copy: the buffer (shared, so a slice of
/// a cache or of a file read once serves many calls) goes to the transport, followed by 8 to 11
/// bytes that make it the archive of a `Vec<u8>`. The caller asks for `Vec<u8>`, reads the
/// bytes in place as [`Archived<Vec<u8>>`](crate::Archived), or asks for a `Blob`: the bytes of
/// the received archive, without another copy (a typed client of a method that returns `Blob`
/// does this). A method may also take a `Blob` where its callers send a `Vec<u8>` (a `Blob`
/// is not itself sent as an argument: callers send the vector, or its archive's bytes are
/// copied like any argument's).
///
/// A method returning `Vec<u8>` gets the same treatment when the vector is 64 KiB or longer;
/// `Blob` serves bytes the method does not own outright. A blob is shorter than 2 GiB (rkyv's
/// 32-bit offsets) and at most the caller's payload limit. The outcome an exactly-once call
/// keeps holds the blob's whole buffer, not only its slice.
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

impl Blob {
    /// The bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl std::ops::Deref for Blob {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

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

impl FromPayload for Blob {
    fn tag() -> u64 {
        type_tag::<Vec<u8>>()
    }

    /// The bytes of a `Vec<u8>`'s archive, validated, as a slice of the received buffer.
    fn from_payload(payload: Payload) -> Result<Self> {
        let archived = Archived::<Vec<u8>>::new(payload)?;
        let (start, len) = {
            let bytes = archived.get().as_slice();
            let base = archived.bytes().as_ptr() as usize;
            (bytes.as_ptr() as usize - base, bytes.len())
        };
        let owner = Bytes::from_owner(Pooled(archived.into_payload()));
        Ok(Self(owner.slice(start..start + len)))
    }
}
