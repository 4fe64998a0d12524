//! Forward, continued: the request body on its way to the upstream, and the moment it has all
//! gone. `response_timeout` counts from then, as Go's `ResponseHeaderTimeout` and nginx's
//! `proxy_read_timeout` do: an upload that takes longer than the timeout (a large file from a
//! slow client) is not cut off with a 504 while it is still being sent.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;

/// The client's request body as the upstream connection reads it.
pub struct Outgoing {
    inner: Incoming,
    /// Dropped once the body has ended (or is dropped itself, sent or not): that wakes
    /// [`AllSent`].
    sending: Option<oneshot::Sender<()>>,
}

/// Completes when the request body has all gone to the upstream (or will not go any more).
pub type AllSent = oneshot::Receiver<()>;

/// Wraps `body`; a body that is empty from the start has nothing to wait for (`None`).
pub fn watch(body: Incoming) -> (Outgoing, Option<AllSent>) {
    if body.is_end_stream() {
        return (
            Outgoing {
                inner: body,
                sending: None,
            },
            None,
        );
    }
    let (tx, rx) = oneshot::channel();
    (
        Outgoing {
            inner: body,
            sending: Some(tx),
        },
        Some(rx),
    )
}

impl Body for Outgoing {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = poll {
            this.sending = None;
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
