//! The hand-off between a caller and its worker thread: one message at a time, from
//! one sending side to one receiving side, in one cache line.
//!
//! A call crosses two of these (the request, then the reply). A crossbeam channel
//! would do, and did: but a bounded channel keeps its message apart from its head and
//! tail counters, so one hand-off moves two or three cache lines between the cores,
//! where this moves one: the line that holds both the message and the word that says
//! it is there. On the 2-core virtual machine of `BENCHMARKS.md`, a request and its
//! reply between two polling threads take 331–350 ns through two channels (with the
//! messages as they were) and 220–240 ns through two hand-offs.
//!
//! Either side may wait: polling ([`Receiver::try_recv`]), or asleep (parked) until
//! the other side wakes it. A side that is dropped disconnects the other, which then
//! gets an error instead of waiting for ever; a message in the slot when the receiver
//! is dropped is dropped then (one that lands as it is dropped, when the sender goes).

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, TryRecvError};
use crossbeam_utils::CachePadded;

/// A message is in the slot.
const FULL: u32 = 1;
/// The sender was dropped.
const SENDER_GONE: u32 = 1 << 1;
/// The receiver was dropped.
const RECEIVER_GONE: u32 = 1 << 2;
/// The receiver sleeps (or is about to) until a message comes.
const RECEIVER_SLEEPS: u32 = 1 << 3;
/// The sender sleeps (or is about to) until the slot is empty.
const SENDER_SLEEPS: u32 = 1 << 4;

/// How long a sender that finds the slot full spins, yielding its core, before it
/// sleeps (only a reply nobody has collected yet keeps a slot full).
const FULL_SPIN: Duration = Duration::from_micros(50);

/// The line both sides poll: the state and the message.
struct Line<T> {
    state: AtomicU32,
    message: UnsafeCell<Option<T>>,
}

struct Shared<T> {
    line: CachePadded<Line<T>>,
    /// The threads asleep, for the side that wakes them (touched only to sleep and to
    /// wake, never on a hand-off between two awake sides).
    sleepers: Mutex<Sleepers>,
}

#[derive(Default)]
struct Sleepers {
    receiver: Option<Thread>,
    sender: Option<Thread>,
}

// SAFETY: the message is written only by the one `Sender` (through `&mut self`, so by
// one thread at a time) while `FULL` is clear, and taken only by the one `Receiver`
// (the same) while it is set. Each side ends its access with a read-modify-write of
// the state (sequentially consistent, so a release) that the other side reads with
// acquire before its own access. So the message is never accessed from two threads
// at once, and moving it between them needs only `T: Send`.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    fn sleepers(&self) -> std::sync::MutexGuard<'_, Sleepers> {
        self.sleepers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the side whose sleep bit `bit` was set in `before`.
    fn wake(&self, before: u32, bit: u32) {
        if before & bit == 0 {
            return;
        }
        let sleepers = self.sleepers();
        let sleeper = if bit == RECEIVER_SLEEPS {
            &sleepers.receiver
        } else {
            &sleepers.sender
        };
        if let Some(thread) = sleeper {
            thread.unpark();
        }
    }

    /// Sleeps as the side whose sleep bit is `bit`, until `ready(state)` or `until`
    /// (none: no limit); returns the state it woke to. A wake-up that comes between
    /// the check and the sleep is kept by the thread's park token, so none is lost.
    fn sleep(&self, bit: u32, until: Option<Instant>, ready: impl Fn(u32) -> bool) -> u32 {
        {
            let mut sleepers = self.sleepers();
            let me = Some(std::thread::current());
            if bit == RECEIVER_SLEEPS {
                sleepers.receiver = me;
            } else {
                sleepers.sender = me;
            }
        }
        let state = self.line.state.fetch_or(bit, Ordering::SeqCst);
        if !ready(state) {
            match until {
                Some(until) => {
                    let left = until.saturating_duration_since(Instant::now());
                    if !left.is_zero() {
                        std::thread::park_timeout(left);
                    }
                }
                None => std::thread::park(),
            }
        }
        self.line.state.fetch_and(!bit, Ordering::SeqCst) & !bit
    }
}

/// Whether a message of type `T` shares the first 64 bytes of the line with the
/// state word, so that a hand-off moves one cache line.
#[cfg(test)]
pub(super) fn fits_one_line<T>() -> bool {
    std::mem::size_of::<Line<T>>() <= 64
}

/// A new hand-off: its sending and its receiving side.
pub(super) fn handoff<T: Send>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        line: CachePadded::new(Line {
            state: AtomicU32::new(0),
            message: UnsafeCell::new(None),
        }),
        sleepers: Mutex::new(Sleepers::default()),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

/// The sending side. There is one, and it sends through `&mut self`: one thread at a
/// time.
pub(super) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving side. There is one, and it receives through `&mut self`: one thread
/// at a time.
pub(super) struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// Puts `message` in the slot, waiting while the one before is still there; gives
    /// it back if the receiver is gone.
    pub(super) fn send(&mut self, message: T) -> Result<(), T> {
        let line = &self.shared.line;
        let spin_until = Instant::now() + FULL_SPIN;
        let mut state = line.state.load(Ordering::Acquire);
        loop {
            if state & RECEIVER_GONE != 0 {
                return Err(message);
            }
            if state & FULL == 0 {
                break;
            }
            if Instant::now() < spin_until {
                std::thread::yield_now();
                state = line.state.load(Ordering::Acquire);
            } else {
                state = self.shared.sleep(SENDER_SLEEPS, None, |state| {
                    state & FULL == 0 || state & RECEIVER_GONE != 0
                });
            }
        }
        // SAFETY: `FULL` is clear (read with acquire, after the receiver's release
        // store that cleared it once it had taken the message before), and only this
        // sender sets it: the receiver does not touch the message until it sees
        // `FULL`, which is set below, after this write.
        unsafe { *line.message.get() = Some(message) };
        let before = line.state.fetch_or(FULL, Ordering::SeqCst);
        self.shared.wake(before, RECEIVER_SLEEPS);
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let before = self
            .shared
            .line
            .state
            .fetch_or(SENDER_GONE, Ordering::SeqCst);
        self.shared.wake(before, RECEIVER_SLEEPS);
    }
}

impl<T> Receiver<T> {
    /// Takes the message if one is there, without waiting. A message sent before the
    /// sender was dropped is still taken; after it, the sender's drop disconnects.
    pub(super) fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let state = self.shared.line.state.load(Ordering::Acquire);
        if state & FULL != 0 {
            return Ok(self.take());
        }
        if state & SENDER_GONE != 0 {
            // A message sent just before the drop set `FULL` before `SENDER_GONE`.
            return Err(TryRecvError::Disconnected);
        }
        Err(TryRecvError::Empty)
    }

    /// Takes the message, which `FULL` says is there.
    fn take(&mut self) -> T {
        let line = &self.shared.line;
        // SAFETY: `FULL` is set (read with acquire, after the sender's release store
        // that set it once its write was done), and only this receiver clears it: the
        // sender does not write the message again until it sees `FULL` clear, which
        // happens below, after this read.
        let message = unsafe { (*line.message.get()).take() };
        let before = line.state.fetch_and(!FULL, Ordering::SeqCst);
        self.shared.wake(before, SENDER_SLEEPS);
        message.expect("a full slot holds a message")
    }

    /// Waits for the message until `deadline` (none: for ever), asleep.
    pub(super) fn recv_by(&mut self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        loop {
            match self.try_recv() {
                Ok(message) => return Ok(message),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Err(RecvTimeoutError::Timeout);
            }
            self.shared.sleep(RECEIVER_SLEEPS, deadline, |state| {
                state & (FULL | SENDER_GONE) != 0
            });
        }
    }

    /// Waits for the message, asleep; `None` once the sender is gone.
    pub(super) fn recv(&mut self) -> Option<T> {
        self.recv_by(None).ok()
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let before = self
            .shared
            .line
            .state
            .fetch_or(RECEIVER_GONE, Ordering::SeqCst);
        if before & FULL != 0 {
            // Nobody will take it: drop it now, not when the sender goes.
            drop(self.take());
        }
        self.shared.wake(before, SENDER_SLEEPS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_cross_in_order_between_two_threads() {
        let (mut requests, mut incoming) = handoff::<u64>();
        let (mut replies, mut answers) = handoff::<u64>();
        let worker = std::thread::spawn(move || {
            while let Some(n) = incoming.recv() {
                replies.send(n * 2).unwrap();
            }
        });
        for n in 0..10_000u64 {
            requests.send(n).unwrap();
            let answer = if n % 2 == 0 {
                answers.recv_by(None).unwrap()
            } else {
                loop {
                    match answers.try_recv() {
                        Ok(answer) => break answer,
                        Err(TryRecvError::Empty) => std::hint::spin_loop(),
                        Err(TryRecvError::Disconnected) => panic!("the worker left"),
                    }
                }
            };
            assert_eq!(answer, n * 2);
        }
        drop(requests);
        worker.join().unwrap();
        assert!(matches!(
            answers.recv_by(None),
            Err(RecvTimeoutError::Disconnected)
        ));
    }

    #[test]
    fn a_sleeping_receiver_is_woken_by_a_message_and_by_the_sender_leaving() {
        let (mut sender, mut receiver) = handoff::<&'static str>();
        let waiting = std::thread::spawn(move || {
            let first = receiver.recv();
            let then = receiver.recv();
            (first, then)
        });
        std::thread::sleep(Duration::from_millis(50));
        sender.send("hello").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        drop(sender);
        assert_eq!(waiting.join().unwrap(), (Some("hello"), None));
    }

    #[test]
    fn a_message_sent_before_the_sender_left_is_still_taken() {
        let (mut sender, mut receiver) = handoff::<u8>();
        sender.send(7).unwrap();
        drop(sender);
        assert_eq!(receiver.try_recv(), Ok(7));
        assert_eq!(receiver.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[test]
    fn a_receiver_times_out_at_its_deadline() {
        let (_sender, mut receiver) = handoff::<u8>();
        let started = Instant::now();
        let waited = receiver.recv_by(Some(started + Duration::from_millis(30)));
        assert_eq!(waited, Err(RecvTimeoutError::Timeout));
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn a_sender_waits_while_the_slot_is_full_and_fails_once_the_receiver_left() {
        let (mut sender, mut receiver) = handoff::<u32>();
        sender.send(1).unwrap();
        let second = std::thread::spawn(move || {
            let sent = sender.send(2);
            (sent, sender)
        });
        // Past the sender's spin: it sleeps until the slot is empty.
        std::thread::sleep(Duration::from_millis(20));
        assert!(!second.is_finished(), "the slot was full");
        assert_eq!(receiver.recv(), Some(1));
        let (sent, mut sender) = second.join().unwrap();
        assert_eq!(sent, Ok(()));
        assert_eq!(receiver.recv(), Some(2));

        sender.send(3).unwrap();
        let third = std::thread::spawn(move || sender.send(4));
        std::thread::sleep(Duration::from_millis(20));
        drop(receiver);
        assert_eq!(third.join().unwrap(), Err(4), "the receiver is gone");
    }

    #[test]
    fn a_message_left_in_the_slot_goes_with_the_receiver() {
        let batch = Arc::new(());
        let (mut sender, receiver) = handoff::<Arc<()>>();
        sender.send(batch.clone()).unwrap();
        assert_eq!(Arc::strong_count(&batch), 2);
        drop(receiver);
        assert_eq!(Arc::strong_count(&batch), 1, "dropped with the receiver");
        assert_eq!(sender.send(batch.clone()), Err(batch.clone()));
        assert_eq!(Arc::strong_count(&batch), 1);
    }
}
