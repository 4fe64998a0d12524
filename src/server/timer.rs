//! Accept, continued: the clock behind the header-read deadline (rule 20). hyper arms it for
//! every request on a keep-alive connection and drops it once the head is parsed, so nearly
//! every deadline is cancelled, never reached. With tokio's timer each one cost a runtime
//! handle clone, a lock of the timer driver to register and another to deregister (~1,500
//! instructions a request, callgrind). Here a deadline is a slot in its worker's own list,
//! checked a few times per timeout period by one ticker task: cheap to arm and to drop, and
//! a slow client is cut off at most one tick late. The upstream's read timeout in the middle
//! of a response body (`proxy/received.rs`) is armed and dropped as often, and uses it too.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

/// The coarse [`Timer`]: hyper's HTTP/1 header-read deadline and the upstreams' read timeout
/// (`proxy/received.rs`). Deadlines are served by the ticker
/// of the worker thread that polls them ([`tick`]); on a thread without one they fall back
/// to tokio's timer.
#[derive(Debug, Clone, Copy, Default)]
pub struct CoarseTimer;

impl Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(Deadline {
            deadline,
            slot: None,
            fallback: None,
        })
    }
}

/// The tick for deadlines of `timeout`: a quarter of it, between 10 ms and one second, so a
/// deadline fires at most that late.
pub fn tick_for(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Serves the deadlines of this thread until the runtime stops: every `every`, wakes those
/// that have passed. One per worker thread.
pub async fn tick(every: Duration) {
    let id = NEXT_LIST.fetch_add(1, Ordering::Relaxed);
    let installed = LIST.try_with(|list| {
        *list.borrow_mut() = Some(List {
            id,
            slots: Vec::new(),
            free: Vec::new(),
        })
    });
    if installed.is_err() {
        return;
    }
    // When this task ends (runtime shutdown), the list goes with it: later deadlines fall
    // back to tokio's timer instead of waiting on a list nobody ticks.
    let _list = Uninstall;
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let now = Instant::now();
        let due = LIST.try_with(|list| {
            let mut list = list.borrow_mut();
            let mut due = Vec::new();
            if let Some(list) = list.as_mut() {
                for slot in &mut list.slots {
                    // A free slot has no waker: only owned, unfired ones are due.
                    if !slot.fired
                        && slot.deadline <= now
                        && let Some(waker) = slot.waker.take()
                    {
                        slot.fired = true;
                        due.push(waker);
                    }
                }
            }
            due
        });
        // Woken outside the borrow: a woken task may run (and drop its deadline) at once.
        due.unwrap_or_default().into_iter().for_each(Waker::wake);
    }
}

/// Removes this thread's list when the ticker task is dropped.
struct Uninstall;

impl Drop for Uninstall {
    fn drop(&mut self) {
        let _ = LIST.try_with(|list| {
            if let Ok(mut list) = list.try_borrow_mut() {
                *list = None;
            }
        });
    }
}

static NEXT_LIST: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static LIST: RefCell<Option<List>> = const { RefCell::new(None) };
}

/// One worker's deadlines. A slot belongs to one [`Deadline`] from its first pending poll
/// until it is dropped.
struct List {
    id: u64,
    slots: Vec<Slot>,
    free: Vec<usize>,
}

struct Slot {
    deadline: Instant,
    /// Set while a [`Deadline`] owns the slot and has not fired; `None` when free.
    waker: Option<Waker>,
    fired: bool,
}

/// A coarse deadline. `slot` is (list id, index) once registered with a worker's list.
struct Deadline {
    deadline: Instant,
    slot: Option<(u64, usize)>,
    fallback: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Sleep for Deadline {}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Some(fallback) = &mut this.fallback {
            return fallback.as_mut().poll(cx);
        }
        // A replaced waker is dropped only after the borrow: it may hold the last reference to
        // a task whose drop (and its deadlines' drops) comes back to this list.
        let mut replaced = None;
        let registered = LIST.try_with(|list| {
            let mut list = list.try_borrow_mut().ok()?;
            let list = list.as_mut()?;
            match this.slot {
                Some((id, index)) if id == list.id => {
                    let slot = list.slots.get_mut(index)?;
                    if slot.fired {
                        return Some(Poll::Ready(()));
                    }
                    if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        replaced = slot.waker.replace(cx.waker().clone());
                    }
                    Some(Poll::Pending)
                }
                // Registered with another thread's list: not ours to touch.
                Some(_) => None,
                None => {
                    let slot = Slot {
                        deadline: this.deadline,
                        waker: Some(cx.waker().clone()),
                        fired: false,
                    };
                    let index = match list.free.pop() {
                        Some(index) => {
                            *list.slots.get_mut(index)? = slot;
                            index
                        }
                        None => {
                            list.slots.push(slot);
                            list.slots.len() - 1
                        }
                    };
                    this.slot = Some((list.id, index));
                    Some(Poll::Pending)
                }
            }
        });
        drop(replaced);
        match registered.ok().flatten() {
            Some(poll) => poll,
            // No ticker on this thread: tokio's timer keeps the promise.
            None => {
                let mut sleep = Box::pin(tokio::time::sleep_until(this.deadline.into()));
                let poll = sleep.as_mut().poll(cx);
                this.fallback = Some(sleep);
                poll
            }
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        let Some((id, index)) = self.slot else {
            return;
        };
        // `try_with`: during thread teardown the list may already be gone.
        let _ = LIST.try_with(|list| {
            if let Ok(mut list) = list.try_borrow_mut()
                && let Some(list) = list.as_mut()
                && list.id == id
                && let Some(slot) = list.slots.get_mut(index)
            {
                slot.waker = None;
                list.free.push(index);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_deadline_fires_no_earlier_than_asked_and_at_most_a_tick_late() {
        tokio::spawn(tick(Duration::from_millis(10)));
        tokio::task::yield_now().await;
        let started = Instant::now();
        CoarseTimer.sleep(Duration::from_millis(100)).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(100), "{took:?}");
        assert!(took < Duration::from_secs(1), "{took:?}");
    }

    #[tokio::test]
    async fn a_dropped_deadline_frees_its_slot_for_the_next() {
        tokio::spawn(tick(Duration::from_millis(10)));
        tokio::task::yield_now().await;
        for _ in 0..100 {
            let mut sleep = CoarseTimer.sleep(Duration::from_secs(60));
            let pending = std::future::poll_fn(|cx| Poll::Ready(sleep.as_mut().poll(cx))).await;
            assert!(pending.is_pending());
        }
        let slots = LIST.with(|l| l.borrow().as_ref().map(|l| l.slots.len()));
        assert_eq!(slots, Some(1), "each dropped deadline gave its slot back");
    }

    #[tokio::test]
    async fn without_a_ticker_on_the_thread_tokio_keeps_the_deadline() {
        let started = Instant::now();
        CoarseTimer.sleep(Duration::from_millis(50)).await;
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn the_tick_is_a_quarter_of_the_timeout_within_bounds() {
        assert_eq!(tick_for(Duration::from_secs(10)), Duration::from_secs(1));
        assert_eq!(
            tick_for(Duration::from_millis(500)),
            Duration::from_millis(125)
        );
        assert_eq!(
            tick_for(Duration::from_millis(1)),
            Duration::from_millis(10)
        );
    }
}
