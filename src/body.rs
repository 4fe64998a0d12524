//! The one response body type every step answers with: the gateway's own small answers, or the
//! upstream's body streamed through untouched. An enum rather than a boxed trait object keeps the
//! proxy hot path free of an allocation per response.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::proxy::received::Received;

#[derive(Debug)]
pub enum Body {
    /// A complete body the gateway produced (pages, JSON, health answers); empty when `None`.
    Full(Option<Bytes>),
    /// The upstream's response body, streamed frame by frame with backpressure.
    Upstream(Received),
}

impl Body {
    pub fn empty() -> Self {
        Self::Full(None)
    }

    pub fn from_static(text: &'static str) -> Self {
        Self::Full(Some(Bytes::from_static(text.as_bytes())))
    }
}

impl From<String> for Body {
    fn from(text: String) -> Self {
        Self::Full(Some(Bytes::from(text)))
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Self::Full(Some(Bytes::from(bytes)))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Self::Upstream(received) => Pin::new(received).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(data) => data.is_none(),
            Self::Upstream(received) => received.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(Some(data)) => SizeHint::with_exact(data.len() as u64),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Upstream(received) => received.size_hint(),
        }
    }
}
