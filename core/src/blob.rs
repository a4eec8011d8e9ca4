//! [`Blob`]: bytes sent as they are, as a reply or an argument.

use bytes::Bytes;

use crate::buffers::{Payload, Pooled};
use crate::codec::{type_tag, Archived, Encode, EncodeAs, Encoded, FromPayload};
use crate::error::{Error, Kind, Result};

/// Bytes sent as they are, without a copy: the buffer (shared, so a slice of a cache or of a
/// file read once serves many calls) goes to the transport, followed by 8 to 11 bytes that make
/// it the archive of a `Vec<u8>`.
///
/// - **As a reply**, the caller asks for `Vec<u8>`, reads the bytes in place as
///   [`Archived<Vec<u8>>`](crate::Archived), or asks for a `Blob`: the bytes of the received
///   archive, without another copy (a typed client of a method that returns `Blob` does this).
/// - **As an argument** (`machine.call("Store.put", &blob)`), the method takes `Vec<u8>`,
///   `Archived<Vec<u8>>` or `Blob`. A `Vec<u8>` argument is archived into a buffer of its own
///   (a copy); a `Blob`'s bytes are not copied, and every retry of the call sends them again
///   from the same buffer (except a blob whose archive is 16 KiB or less, which is copied into
///   its request's head to go out in one write). A typed client (`#[service]`) sends a `Blob` to
///   any of these (see [`EncodeAs`](crate::EncodeAs)).
///
/// A method returning `Vec<u8>` gets the same treatment as a `Blob` when the vector is 64 KiB
/// or longer; `Blob` serves bytes the method does not own outright. A blob is shorter than 2 GiB (rkyv's
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

impl Blob {
    /// What follows the bytes to make them a `Vec<u8>`'s archive.
    fn root(&self) -> Result<Bytes> {
        let len = self.0.len();
        crate::codec::byte_vec_root(len).ok_or_else(|| {
            Error::fatal(
                Kind::Invalid,
                format!("a blob of {len} bytes is longer than an archive can say"),
            )
        })
    }
}

/// A blob is sent as the archive of a `Vec<u8>`: its own buffer, then the archive's root,
/// without a copy. Methods take it as `Vec<u8>`, `Archived<Vec<u8>>` or `Blob`.
impl Encode for Blob {
    fn sent_tag() -> u64 {
        type_tag::<Vec<u8>>()
    }

    /// The archive in one buffer: a copy of the bytes (sending does not make it; see
    /// [`Encode::encode_parts`]).
    fn encode(&self) -> Result<Payload> {
        let root = self.root()?;
        let mut archive = Payload::with_capacity(self.0.len() + root.len());
        archive.extend_from_slice(&self.0);
        archive.extend_from_slice(&root);
        Ok(archive)
    }

    fn encode_parts(&self) -> Result<Encoded> {
        Ok(Encoded::Parts(self.0.clone(), self.root()?))
    }
}

// A blob is sent as a `Vec<u8>`'s archive (see `Encode::sent_tag` above): typed clients of
// methods taking byte vectors send blobs, and byte vectors to methods taking blobs.
impl EncodeAs<Vec<u8>> for Blob {}
impl EncodeAs<Archived<Vec<u8>>> for Blob {}
impl EncodeAs<Blob> for Vec<u8> {}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_is_sent_from_its_own_buffer_as_a_byte_vectors_archive() -> Result<()> {
        let source: Bytes = (0..5000u32).map(|i| (i * 13 + 5) as u8).collect();
        for len in [0, 1, 3, 4, 7, 4096 + 3] {
            let blob = Blob::from(source.slice(1..1 + len));
            let want = rkyv::to_bytes::<rkyv::rancor::Error>(&blob.to_vec())
                .map_err(|e| Error::other(e.to_string()))?;
            let Encoded::Parts(body, tail) = blob.encode_parts()? else {
                panic!("a blob of {len} bytes encoded whole");
            };
            // The same memory, not a copy of it.
            assert_eq!(body.as_ptr(), blob.as_ptr(), "{len} bytes");
            assert_eq!(body.len(), len);
            assert_eq!([&body[..], &tail[..]].concat(), &want[..], "{len} bytes");
            assert_eq!(&blob.encode()?[..], &want[..], "{len} bytes, whole");
        }
        assert_eq!(Blob::sent_tag(), type_tag::<Vec<u8>>());
        Ok(())
    }
}
