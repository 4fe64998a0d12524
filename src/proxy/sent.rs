//! Forward, continued: the request body on its way to the upstream, and the moment it has all
//! gone. `response_timeout` counts from then, as Go's `ResponseHeaderTimeout` and nginx's
//! `proxy_read_timeout` do: an upload that takes longer than the timeout (a large file from a
//! slow client) is not cut off with a 504 while it is still being sent. A body that stops
//! arriving for `[server] body_read_timeout` fails instead (nginx's `client_body_timeout`):
//! the upstream's request is abandoned and the client answered 408, so a slow POST ties up no
//! upstream for ever. An upstream that stops taking the body (its window full, a hung app)
//! is still cut off after `response_timeout` without progress: [`Progress`] tells the forward
//! step whether the body waits on the client or on the upstream.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;

/// A request body that stopped arriving for `body_read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body stopped arriving for {0:?}")]
pub struct Stalled(Duration);

/// Whether `err` (hyper's, when it could not send a request) comes from a [`Stalled`] body.
pub fn stalled(err: &(dyn StdError + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if e.is::<Stalled>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The client's request body as the upstream connection reads it.
pub struct Outgoing {
    inner: Incoming,
    /// Dropped once the body has ended (or is dropped itself, sent or not): that wakes
    /// [`AllSent`].
    sending: Option<oneshot::Sender<()>>,
    progress: Option<Arc<Progress>>,
    /// `body_read_timeout`, and the pause under way: armed only while the client is silent.
    idle: Duration,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Completes when the request body has all gone to the upstream (or will not go any more).
pub type AllSent = oneshot::Receiver<()>;

/// How the body moves: when the upstream connection last asked for more, and whether it is
/// waiting on the client (whose pauses `body_read_timeout` bounds) or not (then a long pause
/// is the upstream not taking what it was given).
#[derive(Debug)]
pub struct Progress {
    start: Instant,
    last_ms: AtomicU64,
    on_client: AtomicBool,
}

impl Progress {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            on_client: AtomicBool::new(false),
        }
    }

    fn mark(&self, on_client: bool) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
        self.on_client.store(on_client, Ordering::Relaxed);
    }

    /// How long the upstream has not asked for more of the body while it had some to take;
    /// zero while the body waits on the client.
    pub fn stalled_upstream(&self) -> Duration {
        if self.on_client.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// What the forward step watches of a body on its way: its end, and its progress.
pub struct Watch {
    pub all_sent: AllSent,
    pub progress: Arc<Progress>,
}

/// Wraps `body`, which may pause for at most `idle`; a body that is empty from the start has
/// nothing to wait for (`None`).
pub fn watch(body: Incoming, idle: Duration) -> (Outgoing, Option<Watch>) {
    let (sending, progress, watch) = if body.is_end_stream() {
        (None, None, None)
    } else {
        let (tx, all_sent) = oneshot::channel();
        let progress = Arc::new(Progress::new());
        let watch = Watch {
            all_sent,
            progress: progress.clone(),
        };
        (Some(tx), Some(progress), Some(watch))
    };
    let body = Outgoing {
        inner: body,
        sending,
        progress,
        idle,
        pause: None,
    };
    (body, watch)
}

impl Body for Outgoing {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(progress) = &this.progress {
            progress.mark(polled.is_pending());
        }
        match polled {
            Poll::Ready(None) => {
                this.sending = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => {
                this.pause = None;
                Poll::Ready(Some(frame.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let pause = this
                    .pause
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match pause.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Stalled(idle))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
