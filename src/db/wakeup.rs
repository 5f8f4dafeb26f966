//! How finished jobs get back to the event loop: the completion channel's
//! sending side ([`CompletionSink`]) and the [`Wakeup`] that interrupts the
//! loop's `poll`. Separate from the threads that use them: the loop, the
//! database threads, the hashing pool and the bus listener all share them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;

use super::jobs::Completion;

/// Wakes the event loop when completions are waiting, at most once per drain:
/// workers set the flag and only the one that flips it pays for the syscall.
pub struct Wakeup {
    waker: mio::Waker,
    pending: AtomicBool,
}

impl Wakeup {
    pub fn new(waker: mio::Waker) -> Wakeup {
        Wakeup {
            waker,
            pending: AtomicBool::new(false),
        }
    }

    pub fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            let _ = self.waker.wake();
        }
    }

    /// Called by the loop before it drains the completion channel.
    pub fn reset(&self) {
        self.pending.store(false, Ordering::Release);
    }
}

/// Where workers send finished jobs.
#[derive(Clone)]
pub struct CompletionSink {
    tx: Sender<Completion>,
    wakeup: Arc<Wakeup>,
}

impl CompletionSink {
    pub fn new(tx: Sender<Completion>, wakeup: Arc<Wakeup>) -> CompletionSink {
        CompletionSink { tx, wakeup }
    }

    pub fn send(&self, c: Completion) {
        // The loop outlives the workers; a send can only fail during shutdown.
        if self.tx.send(c).is_ok() {
            self.wakeup.wake();
        }
    }
}
