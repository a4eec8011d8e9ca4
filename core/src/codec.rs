//! The rkyv codec: arguments, replies and service values travel as rkyv archives, and every
//! archive received is validated before it is read.
//!
//! [`Encode`] and [`Decode`] are implemented for every type that derives `rkyv::Archive`,
//! `rkyv::Serialize` and `rkyv::Deserialize`; they hide rkyv's strategy bounds from signatures.
//!
//! Archives are read from [`Payload`]s, buffers aligned to [`PAYLOAD_ALIGN`] bytes, as rkyv
//! requires.
//!
//! # Copies, per received byte
//!
//! - **Archives** (arguments and replies): one copy, from quinn's receive buffers (whose chunks
//!   have arbitrary boundaries and alignment) into the aligned [`Payload`]; it is then validated
//!   in place. A method that takes [`Archived<T>`], or a caller that asks for an
//!   [`Archived<T>`] reply, reads it there: one copy in all. Taking `T` itself deserializes it:
//!   a second copy, made by rkyv. A slice that is not aligned (an archive nested in another,
//!   such as a service value) is copied into an aligned buffer before it is read.
//! - **Byte streams** ([`crate::ByteStream`]): no copy: the `Bytes` chunks quinn hands over are
//!   handed on.
//!
//! Below this crate, the kernel copies each datagram into quinn's buffer, where it is decrypted
//! in place. [`bytes_copied`] counts the copies made here, so tests can hold the engine to this
//! account.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::{Archive, Deserialize, Portable, Serialize};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::buffers::{Payload, PayloadWriter, PAYLOAD_ALIGN};
use crate::error::{Error, Kind, Result};

/// A value that can be sent: it serializes to an rkyv archive.
///
/// Implemented for every archivable type, and for [`Blob`](crate::Blob), which is sent as the
/// archive of a `Vec<u8>` without copying its bytes.
pub trait Encode {
    /// The type tag the value is sent under, which the receiving method checks: the type's
    /// own, unless the value is sent as the archive of another type (a [`Blob`](crate::Blob)
    /// as a `Vec<u8>`'s). Named apart from [`FromPayload::tag`] so that a type implementing
    /// both is not ambiguous.
    fn sent_tag() -> u64
    where
        Self: Sized,
    {
        type_tag::<Self>()
    }

    /// Serializes `self` into a new archive.
    fn encode(&self) -> Result<Payload>;

    /// The archive as it is sent: by default [`Encode::encode`]'s, in one buffer; a value that
    /// owns bytes the archive holds as they are can hand them over without a copy.
    fn encode_parts(&self) -> Result<Encoded> {
        self.encode().map(Encoded::Whole)
    }
}

/// An archive ready to be sent ([`Encode::encode_parts`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum Encoded {
    /// The archive in one aligned buffer.
    Whole(Payload),
    /// The archive in two buffers sent one after the other, as they are: bytes held by the value
    /// (shared, not copied), then what makes them the archive (for a `Vec<u8>`'s archive, its
    /// root; see [`Blob`](crate::Blob)). Joined, the two must be a valid archive of the type
    /// [`Encode::sent_tag`] names, its root at the end, as rkyv writes it: the receiver checks
    /// it like any archive.
    Parts(bytes::Bytes, bytes::Bytes),
}

impl Encoded {
    /// The archive as two shared buffers (the second empty for a whole archive), for sending
    /// by every try of a call without a copy.
    pub(crate) fn into_shared(self) -> [bytes::Bytes; 2] {
        match self {
            Self::Whole(payload) => [
                bytes::Bytes::from_owner(crate::buffers::Pooled(payload)),
                bytes::Bytes::new(),
            ],
            Self::Parts(body, tail) => [body, tail],
        }
    }
}

/// What a typed client (`#[service]`) sends where its method takes a `T`: a `T`, or a value
/// whose archive the method reads as it would a `T`'s.
///
/// - Any [`Encode`] type for a method taking that type.
/// - A `T` for a method taking [`Archived<T>`] (the method reads the `T` in place).
/// - A [`Blob`](crate::Blob) (its bytes not copied) for a method taking `Vec<u8>` or
///   `Archived<Vec<u8>>`, and a `Vec<u8>` for a method taking a `Blob`.
///
/// A type of your own may say that its archive is a `T`'s; its [`Encode::sent_tag`] must then
/// be the tag the method checks ([`FromPayload::tag`]), or the machine refuses the call (a type
/// that derives rkyv's traits sends its own tag, so this only serves a hand-written `Encode`).
#[diagnostic::on_unimplemented(
    message = "a typed client's method taking `{T}` cannot send a `{Self}`",
    label = "not an argument for a method taking `{T}`",
    note = "a typed client sends a method its own argument type, a `T` where it takes `Archived<T>`, and a `Vec<u8>` or a `Blob` where it takes either or `Archived<Vec<u8>>`"
)]
pub trait EncodeAs<T>: Encode {}

/// `arg`, checked at compile time to be what a method taking `T` reads (typed clients call it).
#[doc(hidden)]
pub fn sent_as<A: EncodeAs<T>, T>(arg: &A) -> &A {
    arg
}

impl<T: Encode> EncodeAs<T> for T {}

impl<T: Encode> EncodeAs<Archived<T>> for T {}

impl<T> Encode for T
where
    T: for<'a> Serialize<HighSerializer<PayloadWriter, ArenaHandle<'a>, rancor::Error>>,
{
    fn encode(&self) -> Result<Payload> {
        rkyv::api::high::to_bytes_in::<_, rancor::Error>(self, PayloadWriter::new())
            .map(PayloadWriter::into_payload)
            .map_err(|e| Error::fatal(Kind::Invalid, format!("serialize: {e}")))
    }
}

/// A value that can be received: its archive is validated, then deserialized.
pub trait Decode: Sized {
    /// Validates the archive in `bytes` and deserializes it.
    fn decode(bytes: &[u8]) -> Result<Self>;
}

impl<T> Decode for T
where
    T: Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + Deserialize<T, HighDeserializer<rancor::Error>>,
{
    fn decode(bytes: &[u8]) -> Result<Self> {
        with_aligned(bytes, |bytes| {
            let archived = access_aligned::<T>(bytes)?;
            rkyv::deserialize::<T, rancor::Error>(archived).map_err(|e| {
                Error::fatal(
                    Kind::Invalid,
                    format!("deserialize {}: {e}", std::any::type_name::<T>()),
                )
            })
        })
    }
}

/// Serializes `value` into a new archive.
pub fn encode<T: Encode + ?Sized>(value: &T) -> Result<Payload> {
    value.encode()
}

/// Validates and deserializes the archive in `bytes`.
pub fn decode<T: Decode>(bytes: &[u8]) -> Result<T> {
    T::decode(bytes)
}

fn access_aligned<T>(bytes: &[u8]) -> Result<&T::Archived>
where
    T: Archive,
    T::Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    rkyv::access::<T::Archived, rancor::Error>(bytes).map_err(|e| {
        Error::fatal(
            Kind::Invalid,
            format!(
                "archive of {} fails validation: {e}",
                std::any::type_name::<T>()
            ),
        )
    })
}

/// Runs `f` on `bytes` if they are aligned, else on an aligned copy of them.
fn with_aligned<R>(bytes: &[u8], f: impl FnOnce(&[u8]) -> Result<R>) -> Result<R> {
    if (bytes.as_ptr() as usize).is_multiple_of(PAYLOAD_ALIGN) {
        f(bytes)
    } else {
        let mut copy = Payload::with_capacity(bytes.len());
        copy.extend_from_slice(bytes);
        count_copy(bytes.len());
        f(&copy)
    }
}

static COPIED: AtomicU64 = AtomicU64::new(0);

/// Bytes this process's engine has copied while receiving (see the module docs), since it
/// started.
pub fn bytes_copied() -> u64 {
    COPIED.load(Ordering::Relaxed)
}

pub(crate) fn count_copy(n: usize) {
    COPIED.fetch_add(n as u64, Ordering::Relaxed);
}

/// Byte vectors at least this long are replied with their own buffer and [`byte_vec_root`]
/// after it, without a copy; shorter ones are archived (copied) like any value.
pub(crate) const OWNED_BYTES_MIN: usize = 64 << 10;

/// What follows the `len` bytes of a `Vec<u8>` to make them, as they are, the archive rkyv
/// writes for that vector: zeros up to the root's alignment (4), then the root, an
/// `ArchivedVec` (a 32-bit offset back to the first byte, then the length). `None` for a vector
/// longer than 32-bit offsets reach (rkyv refuses those too). The unit tests hold it to
/// `rkyv::to_bytes` byte for byte.
pub(crate) fn byte_vec_root(len: usize) -> Option<bytes::Bytes> {
    let root = len.checked_next_multiple_of(4)?;
    let back = i32::try_from(root).ok()?.checked_neg()?;
    let len32 = u32::try_from(len).ok()?;
    let mut tail = vec![0u8; root - len];
    tail.extend_from_slice(&back.to_le_bytes());
    tail.extend_from_slice(&len32.to_le_bytes());
    Some(bytes::Bytes::from(tail))
}

/// A validated archive of a `T`, read in place: the zero-copy form of an argument or reply.
///
/// A method takes `arg: Archived<T>` where the caller sends a `T`; a caller asks for
/// `Archived<R>` where the method returns an `R`. Dereferencing gives `T`'s archived form
/// (`ArchivedVec`, `ArchivedString`, the derived `ArchivedFoo`...).
pub struct Archived<T> {
    payload: Payload,
    archived: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Archived<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archived")
            .field("type", &std::any::type_name::<T>())
            .field("bytes", &self.payload.len())
            .finish()
    }
}

impl<T> Archived<T>
where
    T: Archive,
    T::Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    /// Validates `payload` as an archive of `T`.
    pub fn new(payload: Payload) -> Result<Self> {
        access_aligned::<T>(&payload)?;
        Ok(Self {
            payload,
            archived: PhantomData,
        })
    }

    /// The archived value.
    pub fn get(&self) -> &T::Archived {
        // SAFETY: `new` validated this exact buffer as an archive of `T`, and the buffer is
        // never mutated afterwards (the field is private and only read).
        unsafe { rkyv::access_unchecked::<T::Archived>(&self.payload) }
    }

    /// Deserializes the value (a copy).
    pub fn deserialize(&self) -> Result<T>
    where
        T::Archived: Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        rkyv::deserialize::<T, rancor::Error>(self.get())
            .map_err(|e| Error::fatal(Kind::Invalid, format!("deserialize: {e}")))
    }

    /// The archive's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.payload
    }

    /// The buffer holding the archive.
    pub(crate) fn into_payload(mut self) -> Payload {
        std::mem::take(&mut self.payload)
    }
}

impl<T> Drop for Archived<T> {
    fn drop(&mut self) {
        crate::buffers::give(std::mem::take(&mut self.payload));
    }
}

impl<T> std::ops::Deref for Archived<T>
where
    T: Archive,
    T::Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    type Target = T::Archived;

    fn deref(&self) -> &Self::Target {
        self.get()
    }
}

/// What an argument or reply can be built from: a received payload. Implemented for every
/// [`Decode`] type (deserialized) and for [`Archived<T>`] (validated in place). `tag` is the
/// type tag of the value on the wire, so `Archived<T>` matches a `T` sent by the other side.
pub trait FromPayload: Sized + Send {
    /// The type tag of the value on the wire.
    fn tag() -> u64;
    /// Builds the value from its received archive.
    fn from_payload(payload: Payload) -> Result<Self>;
}

impl<T: Decode + Send> FromPayload for T {
    fn tag() -> u64 {
        type_tag::<T>()
    }

    fn from_payload(payload: Payload) -> Result<Self> {
        let value = T::decode(&payload);
        crate::buffers::give(payload);
        value
    }
}

impl<T> FromPayload for Archived<T>
where
    T: Archive,
    T::Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    fn tag() -> u64 {
        type_tag::<T>()
    }

    fn from_payload(payload: Payload) -> Result<Self> {
        Self::new(payload)
    }
}

/// A fingerprint of a type, sent with each call so that an argument or reply of the wrong type is
/// refused before any archive is read. Driver and machines run the same binary, so the same type
/// has the same name on both sides.
pub fn type_tag<T: ?Sized>() -> u64 {
    // FNV-1a: tiny, stable, good enough to tell a handful of type names apart.
    std::any::type_name::<T>()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    struct Point {
        x: i64,
        label: String,
    }

    #[test]
    fn a_byte_vec_with_its_root_is_rkyvs_archive_of_it() -> Result<()> {
        for len in [
            0,
            1,
            2,
            3,
            4,
            5,
            7,
            8,
            255,
            OWNED_BYTES_MIN,
            OWNED_BYTES_MIN + 3,
            (4 << 20) + 1,
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
            let Some(root) = byte_vec_root(len) else {
                panic!("no root for {len} bytes");
            };
            let mut ours = Payload::with_capacity(len + root.len());
            ours.extend_from_slice(&bytes);
            ours.extend_from_slice(&root);
            let theirs = encode(&bytes)?;
            assert_eq!(&ours[..], &theirs[..], "{len} bytes");
            assert_eq!(access_aligned::<Vec<u8>>(&ours)?.as_slice(), &bytes[..]);
        }
        assert!(byte_vec_root(i32::MAX as usize).is_none());
        Ok(())
    }

    #[test]
    fn round_trip() -> Result<()> {
        let p = Point {
            x: -3,
            label: "origin".into(),
        };
        let bytes = encode(&p)?;
        assert_eq!(decode::<Point>(&bytes)?, p);
        assert_eq!(access_aligned::<Point>(&bytes)?.label, "origin");
        Ok(())
    }

    #[test]
    fn unaligned_input_is_realigned() -> Result<()> {
        let bytes = encode(&Point {
            x: 7,
            label: "seven".into(),
        })?;
        let mut shifted = Payload::new();
        shifted.push(0);
        shifted.extend_from_slice(&bytes);
        assert_eq!(decode::<Point>(&shifted[1..])?.x, 7);
        Ok(())
    }

    #[test]
    fn garbage_is_an_invalid_error() {
        let mut bytes = Payload::new();
        // A vector whose relative pointer lands far outside the buffer.
        bytes.extend_from_slice(&[0x7f; 24]);
        let err = decode::<Vec<u32>>(&bytes).err().map(|e| e.kind());
        assert_eq!(err, Some(Kind::Invalid));
        let mut not_a_bool = Payload::new();
        not_a_bool.push(2);
        assert_eq!(
            decode::<bool>(&not_a_bool).err().map(|e| e.kind()),
            Some(Kind::Invalid)
        );
        assert_eq!(
            decode::<Point>(&[]).err().map(|e| e.kind()),
            Some(Kind::Invalid)
        );
    }

    #[test]
    fn type_tags_differ() {
        assert_ne!(type_tag::<String>(), type_tag::<u64>());
        assert_eq!(type_tag::<Point>(), type_tag::<Point>());
    }
}
