//! Tests that stop parts of the shared stack. They run one at a time (a process-wide lock) and
//! restart what they stopped, so the stack is whole again afterwards.

// A test binary: helpers may panic like the tests they serve.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod outages;
mod unpublished;

/// Serializes the tests of this binary: each one takes a part of the stack away.
pub static STACK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Restarts a part of the stack when dropped, so a failing assertion does not leave it broken.
pub struct Restart(pub &'static str);

impl Drop for Restart {
    fn drop(&mut self) {
        let _ = tests::dev(&["start", self.0]);
    }
}
