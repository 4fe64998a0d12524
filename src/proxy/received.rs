//! Forward, continued: the upstream's response body on its way to the client. Frames pass
//! through untouched; what this adds is a bound on silence. An upstream that sent its headers
//! and then stops in the middle of the body (a hung app, a lost peer behind it) would otherwise
//! hold the client's connection and its own for as long as the client waits. After the
//! upstream's `read_timeout` without a byte (nginx's `proxy_read_timeout`, between two reads,
//! never the whole response), the body ends with an error: hyper closes the client's
//! connection (an HTTP/2 client gets its stream reset), so the client sees a cut-off response,
//! never a complete-looking one, and the upstream connection is dropped, never pooled.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::rt::{Sleep, Timer};

use crate::server::timer::CoarseTimer;

/// The upstream went silent for longer than its `read_timeout` in the middle of a body.
#[derive(Debug, thiserror::Error)]
#[error("upstream {upstream} sent nothing more of its response body for {timeout:?}")]
pub struct Silent {
    upstream: Arc<str>,
    timeout: Duration,
}

/// The upstream's response body as the client reads it.
pub struct Received {
    inner: Incoming,
    read_timeout: Duration,
    /// Armed at the first silence and kept for the whole body: one deadline a response, not
    /// one a frame. When it fires after frames came, it moves to the last frame's time plus
    /// the timeout instead.
    silence: Option<Pin<Box<dyn Sleep>>>,
    /// When the last frame came, once the deadline is armed.
    last_frame: Option<Instant>,
    upstream: Arc<str>,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("upstream", &self.upstream)
            .field("read_timeout", &self.read_timeout)
            .finish_non_exhaustive()
    }
}

impl Received {
    pub fn new(inner: Incoming, read_timeout: Duration, upstream: Arc<str>) -> Self {
        Self {
            inner,
            read_timeout,
            silence: None,
            last_frame: None,
            upstream,
        }
    }
}

impl Body for Received {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(polled) => {
                if this.silence.is_some() {
                    this.last_frame = Some(Instant::now());
                }
                Poll::Ready(polled.map(|frame| frame.map_err(Into::into)))
            }
            Poll::Pending => {
                // The coarse timer: armed for nearly every response (the body is usually a
                // poll behind the head), so it must be cheap; a tick late is fine.
                let timeout = this.read_timeout;
                let silence = this
                    .silence
                    .get_or_insert_with(|| CoarseTimer.sleep_until(Instant::now() + timeout));
                if silence.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // Fired. Frames came since it was armed: the silence began at the last one.
                if let Some(last) = this.last_frame.take()
                    && last + timeout > Instant::now()
                {
                    let mut moved = CoarseTimer.sleep_until(last + timeout);
                    let polled = moved.as_mut().poll(cx);
                    this.silence = Some(moved);
                    if polled.is_pending() {
                        return Poll::Pending;
                    }
                }
                let silent = Silent {
                    upstream: this.upstream.clone(),
                    timeout,
                };
                tracing::warn!(upstream = %this.upstream, timeout_secs = timeout.as_secs_f64(),
                    "upstream went silent in the middle of its response body; cut off");
                Poll::Ready(Some(Err(Box::new(silent))))
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
