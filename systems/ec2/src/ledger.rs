//! The ledger: what the system launched, kept so that shutdown terminates all of it, whatever
//! the launches were doing when it came.
//!
//! A launch is *opened* (by the machine's name) before its request goes out, and *closed* when
//! EC2 answers: with the instance's id, or with a refusal that launched nothing. A launch left
//! open (its request failed in a way that may still have launched an instance, or its future was
//! dropped) is found at shutdown by the machine's tag. Once the ledger is shut, no launch opens,
//! and an instance that arrives after is the launcher's to terminate at once.

use std::collections::HashSet;

/// The launches and instances of one system.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    shut: bool,
    instances: Vec<String>,
    open: HashSet<String>,
}

/// What shutdown must terminate.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Remains {
    /// The instances launched.
    pub(crate) instances: Vec<String>,
    /// Machines whose launch may have made an instance nobody heard of.
    pub(crate) open: Vec<String>,
}

impl Ledger {
    /// Opens the launch of machine `name`; false once the ledger is shut.
    pub(crate) fn open(&mut self, name: &str) -> bool {
        if self.shut {
            return false;
        }
        self.open.insert(name.to_string());
        true
    }

    /// EC2 launched instance `id` for `name`; false when the ledger was shut meanwhile (the
    /// caller terminates the instance: shutdown did not see it).
    pub(crate) fn launched(&mut self, name: &str, id: &str) -> bool {
        self.open.remove(name);
        if self.shut {
            return false;
        }
        self.instances.push(id.to_string());
        true
    }

    /// EC2 refused the launch of `name`: nothing was launched.
    pub(crate) fn refused(&mut self, name: &str) {
        self.open.remove(name);
    }

    /// Machines whose launch is still open.
    pub(crate) fn open_launches(&self) -> Vec<String> {
        self.open.iter().cloned().collect()
    }

    /// Shuts the ledger against new launches; returns what remains to terminate.
    pub(crate) fn shut(&mut self) -> Remains {
        self.shut = true;
        Remains {
            instances: self.instances.clone(),
            open: self.open.drain().collect(),
        }
    }

    /// Every instance launched so far (those shutdown terminated included).
    pub(crate) fn instances(&self) -> &[String] {
        &self.instances
    }

    /// Whether the ledger is shut.
    pub(crate) fn is_shut(&self) -> bool {
        self.shut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_gets_every_instance_and_every_unanswered_launch() {
        let mut l = Ledger::default();
        assert!(l.open("m-1") && l.open("m-2") && l.open("m-3"));
        assert!(l.launched("m-1", "i-1"));
        l.refused("m-2");
        // m-3's request is still out (or failed ambiguously).
        let remains = l.shut();
        assert_eq!(remains.instances, ["i-1"]);
        assert_eq!(remains.open, ["m-3"]);
    }

    #[test]
    fn nothing_opens_after_shutdown_and_a_late_instance_is_the_launchers() {
        let mut l = Ledger::default();
        assert!(l.open("m-1"));
        assert_eq!(l.shut().open, ["m-1"]);
        assert!(!l.open("m-2"), "a launch opened after shutdown");
        assert!(
            !l.launched("m-1", "i-1"),
            "an instance arriving after shutdown must be terminated by its launcher"
        );
        assert!(l.instances().is_empty() && l.is_shut());
    }
}
