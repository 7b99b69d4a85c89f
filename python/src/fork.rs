//! Objects made before `fork()` are dead in the child: their runtime's threads do not exist there.
//!
//! The core refuses a pre-fork `Registry` with a `Closed` error, but a pre-fork registration or
//! watch would wait for tasks that will never run. So every Python object remembers the process
//! that made it and refuses use in any other, and in the child it leaks its Rust value instead
//! of dropping it: a drop could take a lock that a vanished parent thread held at fork time.

use std::mem::ManuallyDrop;

use pyo3::prelude::*;

use crate::errors;

pub(crate) struct ForkBound<T> {
    pid: u32,
    value: ManuallyDrop<T>,
}

impl<T> ForkBound<T> {
    pub(crate) fn new(value: T) -> Self {
        ForkBound {
            pid: std::process::id(),
            value: ManuallyDrop::new(value),
        }
    }

    /// Whether this process is the one that made the value.
    pub(crate) fn is_home(&self) -> bool {
        self.pid == std::process::id()
    }

    /// The value, if this process made it.
    pub(crate) fn here(&self) -> Option<&T> {
        self.is_home().then_some(&*self.value)
    }

    /// The value, or a `ClosedError` in a forked child.
    pub(crate) fn get(&self, py: Python<'_>, what: &str) -> PyResult<&T> {
        if self.is_home() {
            Ok(&self.value)
        } else {
            Err(errors::closed(
                py,
                format!(
                    "this {what} was created before fork(); create a new Registry in the child process"
                ),
            ))
        }
    }
}

impl<T> Drop for ForkBound<T> {
    fn drop(&mut self) {
        if self.is_home() {
            // SAFETY: dropped exactly once, here; the value is never used again.
            unsafe { ManuallyDrop::drop(&mut self.value) }
        }
    }
}
