//! Forward, continued: the request body on its way to the upstream, and the moment it has all
//! gone. `response_timeout` counts from then, as Go's `ResponseHeaderTimeout` and nginx's
//! `proxy_read_timeout` do: an upload that takes longer than the timeout (a large file from a
//! slow client) is not cut off with a 504 while it is still being sent. A body that stops
//! arriving for `[server] body_read_timeout` fails instead (nginx's `client_body_timeout`):
//! the upstream's request is abandoned and the client answered 408, so a slow POST ties up no
//! upstream for ever.

use std::error::Error as StdError;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

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
    /// `body_read_timeout`, and the pause under way: armed only while the client is silent.
    idle: Duration,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Completes when the request body has all gone to the upstream (or will not go any more).
pub type AllSent = oneshot::Receiver<()>;

/// Wraps `body`, which may pause for at most `idle`; a body that is empty from the start has
/// nothing to wait for (`None`).
pub fn watch(body: Incoming, idle: Duration) -> (Outgoing, Option<AllSent>) {
    let (sending, all_sent) = if body.is_end_stream() {
        (None, None)
    } else {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(rx))
    };
    let body = Outgoing {
        inner: body,
        sending,
        idle,
        pause: None,
    };
    (body, all_sent)
}

impl Body for Outgoing {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
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
