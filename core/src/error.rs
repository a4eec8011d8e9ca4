//! The error model: every error has a [`Kind`] (what went wrong), a [`Severity`] (whether trying
//! again may help) and an optional cause, and crosses the wire intact.
//!
//! Errors returned by a service method reach the caller as [`Kind::Remote`] with the method's
//! own error (kind, severity, text) as their cause. Errors raised by the engine itself (a lost
//! connection, a bad argument, a deadline) carry their own kind directly.

use std::fmt;
use std::time::Duration;

/// A bigmachine result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Kind {
    /// Not otherwise classified.
    #[default]
    Other,
    /// A network failure: a connection could not be made, was lost, or a stream broke.
    Net,
    /// The machine is not available: it stopped, failed its keepalive or was never reached.
    Unavailable,
    /// The input was malformed: a bad header, an argument of the wrong type, an archive that
    /// fails validation, a payload over the limit.
    Invalid,
    /// The error happened on a remote machine; the remote error is the cause.
    Remote,
    /// The operation was canceled by its caller.
    Canceled,
    /// The operation's deadline passed.
    DeadlineExceeded,
    /// The machine ran out of memory.
    Oom,
    /// The operation is not supported (for instance, an unknown service or method).
    NotSupported,
    /// A precondition of the operation does not hold.
    Precondition,
    /// The caller may not do this: a machine asked a peer for what only the driver that owns
    /// it may ask (its binary, environment, services, keepalives, shutdown).
    NotAllowed,
}

impl Kind {
    pub(crate) const ALL: [Self; 11] = [
        Self::Other,
        Self::Net,
        Self::Unavailable,
        Self::Invalid,
        Self::Remote,
        Self::Canceled,
        Self::DeadlineExceeded,
        Self::Oom,
        Self::NotSupported,
        Self::Precondition,
        Self::NotAllowed,
    ];

    /// The kind's number on the wire.
    pub(crate) fn code(self) -> u8 {
        self as u8
    }

    /// The kind of a number from the wire; unknown numbers are [`Kind::Other`].
    pub(crate) fn from_code(code: u8) -> Self {
        Self::ALL
            .get(usize::from(code))
            .copied()
            .unwrap_or(Self::Other)
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Other => "error",
            Self::Net => "network error",
            Self::Unavailable => "unavailable",
            Self::Invalid => "invalid",
            Self::Remote => "remote error",
            Self::Canceled => "canceled",
            Self::DeadlineExceeded => "deadline exceeded",
            Self::Oom => "out of memory",
            Self::NotSupported => "not supported",
            Self::Precondition => "precondition failed",
            Self::NotAllowed => "not allowed",
        }
    }
}

/// Whether an operation that failed may succeed if tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Severity {
    /// Nothing is known.
    #[default]
    Unknown,
    /// Trying again at once may succeed.
    Retriable,
    /// Trying again after a while may succeed (what [`crate::Machine::retry_call`] retries).
    Temporary,
    /// Trying again will fail the same way.
    Fatal,
}

impl Severity {
    const ALL: [Self; 4] = [Self::Unknown, Self::Retriable, Self::Temporary, Self::Fatal];

    /// The severity's number on the wire.
    pub(crate) fn code(self) -> u8 {
        self as u8
    }

    /// The severity of a number from the wire; unknown numbers are [`Severity::Unknown`].
    pub(crate) fn from_code(code: u8) -> Self {
        Self::ALL
            .get(usize::from(code))
            .copied()
            .unwrap_or(Self::Unknown)
    }
}

/// A bigmachine error: kind, severity, message and cause chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: Kind,
    severity: Severity,
    message: String,
    cause: Option<Box<Self>>,
}

impl Error {
    /// An error of `kind` with `message` and unknown severity.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            severity: Severity::Unknown,
            message: message.into(),
            cause: None,
        }
    }

    /// A [`Severity::Temporary`] error.
    pub fn temporary(kind: Kind, message: impl Into<String>) -> Self {
        Self::new(kind, message).with_severity(Severity::Temporary)
    }

    /// A [`Severity::Fatal`] error.
    pub fn fatal(kind: Kind, message: impl Into<String>) -> Self {
        Self::new(kind, message).with_severity(Severity::Fatal)
    }

    /// An error of kind [`Kind::Other`] from any displayable error, for use with `?` in methods:
    /// `std::fs::read(p).map_err(Error::other)?`.
    pub fn other(err: impl fmt::Display) -> Self {
        Self::new(Kind::Other, err.to_string())
    }

    /// A [`Kind::Canceled`] error.
    pub fn canceled(message: impl Into<String>) -> Self {
        Self::fatal(Kind::Canceled, message)
    }

    /// A [`Kind::DeadlineExceeded`] error for an operation that was allowed `after`. Its
    /// severity is [`Severity::Unknown`]: the time the caller gave is spent, so retrying the
    /// call is not for [`crate::Call::retry`] to decide.
    pub fn deadline_exceeded(what: &str, after: Option<Duration>) -> Self {
        let message = match after {
            Some(d) => format!("{what}: no reply within {d:?}"),
            None => what.to_string(),
        };
        Self::new(Kind::DeadlineExceeded, message)
    }

    /// Sets the severity.
    pub fn with_severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }

    /// Sets the cause. If this error's severity is unknown it takes the cause's.
    pub fn caused_by(mut self, cause: Self) -> Self {
        if self.severity == Severity::Unknown {
            self.severity = cause.severity;
        }
        self.cause = Some(Box::new(cause));
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Whether trying again may help.
    pub fn severity(&self) -> Severity {
        self.severity
    }

    /// The message of this error alone, without its cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The error that caused this one.
    pub fn cause(&self) -> Option<&Self> {
        self.cause.as_deref()
    }

    /// This error and its causes, outermost first.
    pub fn chain(&self) -> impl Iterator<Item = &Self> {
        std::iter::successors(Some(self), |e| e.cause())
    }

    /// Whether this error or one of its causes is of `kind`.
    pub fn is(&self, kind: Kind) -> bool {
        self.chain().any(|e| e.kind == kind)
    }

    /// Whether retrying may succeed: the severity is [`Severity::Temporary`] or
    /// [`Severity::Retriable`].
    pub fn is_temporary(&self) -> bool {
        matches!(self.severity, Severity::Temporary | Severity::Retriable)
    }

    /// Whether retrying will fail the same way.
    pub fn is_fatal(&self) -> bool {
        self.severity == Severity::Fatal
    }

    /// A [`Severity::Fatal`] error describing a panic caught in `what`.
    pub(crate) fn from_panic(what: &str, panic: &(dyn std::any::Any + Send)) -> Self {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_string());
        Self::fatal(Kind::Other, format!("{what} panicked: {message}"))
    }

    /// Sets the cause exactly as given, keeping this error's severity (errors rebuilt from the
    /// wire keep the severities they were sent with).
    pub(crate) fn with_cause(mut self, cause: Self) -> Self {
        self.cause = Some(Box::new(cause));
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind.describe())?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if let Some(cause) = &self.cause {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let kind = match e.kind() {
            K::ConnectionRefused | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
                Kind::Net
            }
            K::InvalidInput | K::InvalidData => Kind::Invalid,
            K::TimedOut => Kind::DeadlineExceeded,
            K::OutOfMemory => Kind::Oom,
            K::Unsupported => Kind::NotSupported,
            _ => Kind::Other,
        };
        Self::new(kind, e.to_string())
    }
}

impl From<bigmachine_quic::Error> for Error {
    fn from(e: bigmachine_quic::Error) -> Self {
        use bigmachine_quic::Error as E;
        match &e {
            E::Connection(c) if bigmachine_quic::is_handshake_refusal(c) => {
                Self::fatal(Kind::Net, format!("TLS handshake refused: {e}"))
            }
            E::Config(_) => Self::fatal(Kind::Invalid, e.to_string()),
            E::Shut(_) => Self::fatal(Kind::Unavailable, e.to_string()),
            E::Certificate(_) | E::Tls(_) | E::Io(_) => Self::fatal(Kind::Other, e.to_string()),
            E::Connect(_) | E::Connection(_) | E::ConnectTimeout(_) => {
                Self::temporary(Kind::Net, e.to_string())
            }
        }
    }
}

impl From<quinn::ConnectionError> for Error {
    fn from(e: quinn::ConnectionError) -> Self {
        bigmachine_quic::Error::Connection(e).into()
    }
}

impl From<quinn::WriteError> for Error {
    fn from(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::ConnectionLost(c) => c.into(),
            e => Self::temporary(Kind::Net, format!("stream write: {e}")),
        }
    }
}

impl From<quinn::ClosedStream> for Error {
    fn from(e: quinn::ClosedStream) -> Self {
        Self::temporary(Kind::Net, format!("stream: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_is_inherited_from_an_unknown_cause_only() {
        let e = Error::new(Kind::Remote, "from m1").caused_by(Error::fatal(Kind::Invalid, "bad"));
        assert!(e.is_fatal());
        assert_eq!(e.to_string(), "remote error: from m1: invalid: bad");
        let kept = Error::temporary(Kind::Net, "x").caused_by(Error::fatal(Kind::Invalid, "y"));
        assert!(kept.is_temporary());
        assert!(kept.is(Kind::Invalid) && !kept.is(Kind::Oom));
    }
}
