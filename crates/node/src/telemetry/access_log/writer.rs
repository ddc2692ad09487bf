//! Access log lines leave the data path through a bounded queue to one writer thread.
//!
//! A `connection complete` line costs its formatting and a `write` to stderr; on a tokio worker
//! every other connection of that thread waits for both. So an entry recorded on a runtime
//! thread is queued, and a dedicated thread (`access-log`) emits it as the same `tracing`
//! event, under the dispatcher that was current where it was recorded: the line is exactly the
//! one an in-place emit prints (its timestamp is taken when it is written, a few milliseconds
//! later at most). The writer gathers lines for [`GATHER`] after the first one arrives, so a busy
//! proxy wakes it once per interval rather than once per connection.
//!
//! Invariants:
//! - No entry is lost: one that finds the queue full is emitted in place by the thread that
//!   recorded it ([`written_in_place`] counts those), and so is one recorded outside a runtime
//!   (a plain thread or test keeps its lines in order with the rest of its output).
//! - [`flush`] returns once every entry queued before it was called has been written (or after
//!   [`FLUSH_LIMIT`], should the writer be stuck on a blocked stderr).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tracing::Dispatch;

use super::{AccessRecord, emit_refused};
use crate::telemetry::Direction;

/// Entries the queue holds; beyond that they are written in place.
const CAPACITY: usize = 4096;
/// How long the writer collects lines after the first before writing them.
const GATHER: Duration = Duration::from_millis(5);
/// Batch capacity the writer keeps between batches (a burst's larger one is given back).
const KEEP: usize = 256;
/// How long [`flush`] waits at most.
const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// One access log event, as recorded on the data path.
// By value, not boxed: a queued line costs no allocation of its own (refusals are the rare
// small variant).
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Entry {
    /// `connection complete`.
    Complete(AccessRecord),
    /// `connection failed` (refused before it was opened).
    Refused {
        src: SocketAddr,
        dst: SocketAddr,
        direction: Direction,
        error: String,
    },
}

/// Records `entry`: queued for the writer thread when recorded on a runtime thread, else (or if
/// the queue is full, or the writer could not start) emitted in place.
pub(crate) fn submit(entry: Entry) {
    if tokio::runtime::Handle::try_current().is_err() {
        return entry.emit();
    }
    match global() {
        Some(queue) => queue.submit(entry),
        None => entry.emit(),
    }
}

/// Waits until every entry queued so far has been written (for five seconds at most, should
/// stderr be blocked). The node proxy calls it when it has drained, and when the last handle of
/// its telemetry goes; a binary may call it before exiting.
pub fn flush() {
    if let Some(queue) = QUEUE.get().and_then(Option::as_ref) {
        queue.flush();
    }
}

/// How many entries found the queue full and were written in place, since the process began.
pub fn written_in_place() -> u64 {
    QUEUE
        .get()
        .and_then(Option::as_ref)
        .map_or(0, |queue| queue.in_place.load(Ordering::Relaxed))
}

// === impl Entry ===

impl Entry {
    fn emit(&self) {
        match self {
            Self::Complete(record) => record.emit(),
            Self::Refused {
                src,
                dst,
                direction,
                error,
            } => emit_refused(*src, *dst, *direction, error),
        }
    }
}

// === the queue ===

/// The process's queue; `None` if its writer thread could not be started.
static QUEUE: OnceLock<Option<Arc<Queue>>> = OnceLock::new();

fn global() -> Option<&'static Queue> {
    QUEUE
        .get_or_init(|| match Queue::start(CAPACITY, "access-log") {
            Ok(queue) => Some(queue),
            Err(e) => {
                // Lines are still written, in place; say once why.
                tracing::warn!(error = %e, "cannot start the access log writer thread");
                None
            }
        })
        .as_deref()
}

/// A bounded queue of entries and the thread writing them. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Queue {
    capacity: usize,
    state: Mutex<State>,
    /// Wakes the writer: a first entry, a filling queue, a flush, or closing.
    work: Condvar,
    /// Wakes flushers after each batch.
    done: Condvar,
    in_place: AtomicU64,
}

#[derive(Debug)]
struct State {
    entries: Vec<(Dispatch, Entry)>,
    /// Entries ever queued, and ever written by the writer.
    queued: u64,
    written: u64,
    writer: Writer,
    flushers: usize,
    closed: bool,
}

/// What the writer thread is doing, so that a submitter wakes it only when needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// Waiting for a first entry.
    Idle,
    /// Collecting entries for up to [`GATHER`].
    Gathering,
    /// Writing a batch, lock released.
    Writing,
}

impl Queue {
    /// A queue of `capacity` entries and its writer thread, named `name`.
    pub(crate) fn start(capacity: usize, name: &str) -> std::io::Result<Arc<Self>> {
        let queue = Arc::new(Self {
            capacity,
            state: Mutex::new(State {
                entries: Vec::new(),
                queued: 0,
                written: 0,
                writer: Writer::Writing,
                flushers: 0,
                closed: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            in_place: AtomicU64::new(0),
        });
        let writer = queue.clone();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || writer.run())?;
        Ok(queue)
    }

    /// Queues `entry` with the current dispatcher, or emits it in place if the queue is full.
    pub(crate) fn submit(&self, entry: Entry) {
        let dispatch = tracing::dispatcher::get_default(Dispatch::clone);
        let mut state = self.lock();
        if state.entries.len() >= self.capacity || state.closed {
            drop(state);
            self.in_place.fetch_add(1, Ordering::Relaxed);
            return entry.emit();
        }
        state.entries.push((dispatch, entry));
        state.queued += 1;
        let wake = match state.writer {
            Writer::Idle => true,
            // Cut the gathering short once, when the queue is half full.
            Writer::Gathering => state.entries.len() == self.capacity / 2,
            Writer::Writing => false,
        };
        if wake {
            state.writer = Writer::Gathering;
            self.work.notify_one();
        }
    }

    /// Waits until everything queued before the call has been written, for up to
    /// [`FLUSH_LIMIT`].
    pub(crate) fn flush(&self) {
        let mut state = self.lock();
        let target = state.queued;
        if state.written >= target {
            return;
        }
        state.flushers += 1;
        self.work.notify_one();
        let mut state = self
            .done
            .wait_timeout_while(state, FLUSH_LIMIT, |s| s.written < target)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        state.flushers -= 1;
    }

    /// Writes what is queued, then stops the writer thread; later entries are written in place.
    #[cfg(test)]
    pub(crate) fn close(&self) {
        self.flush();
        self.lock().closed = true;
        self.work.notify_one();
    }

    /// Entries written in place because the queue was full.
    #[cfg(test)]
    pub(crate) fn written_in_place(&self) -> u64 {
        self.in_place.load(Ordering::Relaxed)
    }

    /// The writer thread.
    fn run(&self) {
        let mut batch = Vec::new();
        let mut state = self.lock();
        loop {
            while state.entries.is_empty() && !state.closed {
                state.writer = Writer::Idle;
                state = self.wait(state);
            }
            if state.entries.is_empty() {
                return; // closed, and nothing left
            }
            state.writer = Writer::Gathering;
            state = self
                .work
                .wait_timeout_while(state, GATHER, |s| {
                    s.flushers == 0 && !s.closed && s.entries.len() < self.capacity / 2
                })
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            state.writer = Writer::Writing;
            std::mem::swap(&mut state.entries, &mut batch);
            drop(state);
            let count = batch.len() as u64;
            for (dispatch, entry) in batch.drain(..) {
                tracing::dispatcher::with_default(&dispatch, || entry.emit());
            }
            batch.shrink_to(KEEP);
            state = self.lock();
            state.written += count;
            if state.flushers > 0 {
                self.done.notify_all();
            }
        }
    }

    fn wait<'a>(&self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.work
            .wait(state)
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics under this lock (entries are emitted outside it).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
