//! The wire format: every byte a call puts on a QUIC stream, as encoders and decoders over byte
//! slices. Nothing here does I/O; [`crate::io`] moves these frames to and from quinn streams, so
//! tests and fuzzers drive the decoders with bytes alone.
//!
//! A call is one bidirectional QUIC stream, or a message on a shared one (small calls: see
//! [`mux`], whose frames carry the same request head and reply header). A call's own stream:
//!
//! ```text
//! request:  magic u16 | version u8 | flags u8 | method_len u16 | reserved u16
//!           | timeout_us u64 | arg_type u64 | reply_type u64 | payload_len u64
//!           | call_id u128                                                       (56 bytes, LE)
//!           | method ("Service.method", method_len bytes) | payload (an rkyv archive)
//!           [ | argument stream: raw bytes up to the end of the QUIC stream ]  (FLAG_STREAM_ARG)
//! grant:    GRANT u8 or NO_GRANT u8, server to client, before the reply          (FLAG_AWAIT_GRANT)
//! reply:    magic u16 | version u8 | status u8 | reserved u32 | payload_len u64  (16 bytes, LE)
//!           | payload (the reply's archive, or an error's)
//!           [ | reply stream frames ]                                          (Status::Stream)
//! frames:   len u32 | len bytes ... closed by 0u32 (success)
//!                                   or by u32::MAX | len u32 | error archive (failure)
//! ```
//!
//! `timeout_us` is the time the caller still allows the call (0: none); the server enforces it
//! from the moment the header arrives, so clocks need not agree. `arg_type` and `reply_type` are
//! [`crate::codec::type_tag`]s. `call_id` names the logical call (every try of it carries the
//! same); with `FLAG_EXACTLY_ONCE` the server runs the method at most once per id. A large
//! argument is sent only once the server has room for it: its request carries `FLAG_AWAIT_GRANT`,
//! the client sends the head alone and waits for one byte, [`GRANT`] (then the payload follows)
//! or [`NO_GRANT`] (the call was refused; the reply says why). Errors travel as archives of their
//! flattened cause chain ([`encode_error`], [`decode_error`]). A stream that cannot complete is reset with one of the
//! [`Reset`] codes.
//!
//! Every field read from the network is checked: magic, version, flags, method length
//! ([`MAX_METHOD_LEN`]) and form, payload length (the receiver's configured limit), frame and error
//! lengths; nothing a peer sends can make a decoder panic or reserve memory it did not send.

mod error;
mod frame;
mod header;
pub mod mux;
mod reset;

pub use error::{decode_error, encode_error, MAX_ERROR_DEPTH};
pub use frame::{
    data_header, end_err, end_ok, split_data, Frame, FrameDecoder, END_ERR, END_OK, MAX_ERROR,
    MAX_FRAME,
};
pub use header::{
    MethodName, ReplyHeader, RequestHeader, Status, FLAG_AWAIT_GRANT, FLAG_EXACTLY_ONCE,
    FLAG_STREAM_ARG, GRANT, GRANT_ABOVE, MAGIC, MAX_METHOD_LEN, NO_GRANT, REPLY_HEADER_LEN,
    REQUEST_HEADER_LEN, VERSION,
};
pub use reset::Reset;
