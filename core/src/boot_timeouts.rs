//! [`BootTimeouts`]: how long each step of a machine's boot may take.

use std::time::Duration;

/// How long each step of a machine's boot may take; a step that takes longer stops the machine
/// with a [`crate::Kind::DeadlineExceeded`] error naming the step. Set with
/// [`crate::Builder::boot_timeouts`].
///
/// ```
/// # use std::time::Duration;
/// let mut timeouts = bigmachine_core::BootTimeouts::default();
/// timeouts.install = Duration::from_secs(30);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BootTimeouts {
    /// Getting the driver's binary onto the machine: from the machine's store, from a peer, or
    /// by the driver's upload. Default: 15 minutes.
    pub binary: Duration,
    /// Installing each service, its `init` included. Default: 10 minutes.
    pub install: Duration,
}

impl Default for BootTimeouts {
    fn default() -> Self {
        Self {
            binary: Duration::from_secs(15 * 60),
            install: Duration::from_secs(10 * 60),
        }
    }
}
