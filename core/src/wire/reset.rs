//! Why a stream was cut: the application error codes of QUIC's RESET_STREAM and STOP_SENDING.

/// The code a stream is reset or stopped with, saying why it will not complete. A reader that
/// sees a reset learns the call failed, never that it completed: a reset stream is never
/// mistaken for a short one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Reset {
    /// A reply dropped on purpose (an injected fault, in tests).
    Dropped = 0,
    /// The reply could not be encoded. No longer sent (a server always has an outcome to send,
    /// see the server's `encode`); kept so that code 1 from an older peer still reads.
    Unencodable = 1,
    /// The caller's argument stream failed or its writer was dropped midway.
    ArgumentAborted = 2,
    /// A reply stream ended early: its reader went away, or the deadline passed.
    ReplyAborted = 3,
    /// The machine ended a call on a shared stream without a reply.
    Unanswered = 4,
}

impl Reset {
    const ALL: [Self; 5] = [
        Self::Dropped,
        Self::Unencodable,
        Self::ArgumentAborted,
        Self::ReplyAborted,
        Self::Unanswered,
    ];

    /// The code on the wire.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The reset of a code from the wire, if it is one of ours.
    pub fn from_code(code: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|r| u64::from(r.code()) == code)
    }

    /// What the reset says, for an error message.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Dropped => "reply dropped (an injected fault)",
            Self::Unencodable => "the reply could not be encoded",
            Self::ArgumentAborted => "the argument stream was aborted",
            Self::ReplyAborted => "the reply stream was cut short",
            Self::Unanswered => "the machine ended the call without a reply",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for r in Reset::ALL {
            assert_eq!(Reset::from_code(r.code().into()), Some(r));
        }
        assert_eq!(Reset::from_code(99), None);
    }
}
