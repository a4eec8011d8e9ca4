//! The context a method runs in: its deadline, its cancellation and who called it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The context of one incoming call, passed to every service method.
///
/// A method that calls other machines passes it on with [`crate::Call::context`], so that the
/// caller's deadline and cancellation reach those calls too. When the caller goes away (it
/// dropped its call, or the deadline passed), the method's future is dropped; the token
/// ([`Context::cancelled`]) lets tasks the method spawned notice it.
#[derive(Debug, Clone)]
pub struct Context {
    deadline: Option<Instant>,
    cancel: CancellationToken,
    peer: Option<SocketAddr>,
}

impl Context {
    /// A context with no deadline and no peer (for calling methods directly, in tests).
    pub fn background() -> Self {
        Self {
            deadline: None,
            cancel: CancellationToken::new(),
            peer: None,
        }
    }

    pub(crate) fn for_call(deadline: Option<Instant>, peer: SocketAddr) -> Self {
        Self {
            deadline,
            cancel: CancellationToken::new(),
            peer: Some(peer),
        }
    }

    /// When the caller stops waiting, if it set a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The time left before the deadline (zero once it has passed), if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Whether the call was canceled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes when the call is canceled.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// The token canceled with the call, to hand to spawned tasks.
    pub fn token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// The address of the calling endpoint, if the call came over the network.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }
}

impl Default for Context {
    fn default() -> Self {
        Self::background()
    }
}
