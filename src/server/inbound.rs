//! Accept, continued: what a client sends, checked before hyper reads it. One wrapper around
//! every accepted connection (after TLS) does two things:
//!
//! - The header-read deadline (rule 20) from the moment a connection is accepted. hyper's own
//!   deadline starts only once it reads an HTTP/1 request head; before that, hyper-util reads
//!   the first bytes to tell HTTP/1 from the HTTP/2 preface with no deadline at all, so a
//!   client that connected and sent nothing (or a few bytes of the preface) held its
//!   connection for ever. Here reads fail once the deadline passes, until the first 24 bytes
//!   (the preface's length) have arrived; after that hyper's own limits apply.
//! - The framing of each HTTP/1 request (rules 19 and 26), followed by [`super::framing`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Sleep, Timer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::framing::Tracker;
use super::timer::CoarseTimer;

/// Bytes that decide HTTP/1 against HTTP/2: the length of the h2c preface.
const DECIDING_BYTES: usize = 24;

/// An accepted connection as hyper reads it.
pub struct Inbound<S> {
    inner: S,
    /// Armed until [`DECIDING_BYTES`] have been read (or the peer closed).
    deadline: Option<Pin<Box<dyn Sleep>>>,
    read: usize,
    framing: Tracker,
}

impl<S> Inbound<S> {
    /// `within`: the first bytes' deadline.
    pub fn new(inner: S, within: Duration, framing: Tracker) -> Self {
        Self {
            inner,
            deadline: Some(CoarseTimer.sleep(within)),
            read: 0,
            framing,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Inbound<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            this.framing.after_read(buf, before)?;
        }
        let Some(deadline) = &mut this.deadline else {
            return poll;
        };
        match &poll {
            Poll::Ready(Ok(())) => {
                let got = buf.filled().len() - before;
                this.read += got;
                if got == 0 || this.read >= DECIDING_BYTES {
                    this.deadline = None;
                }
            }
            Poll::Ready(Err(_)) => {}
            Poll::Pending => {
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within header_read_timeout",
                    )));
                }
            }
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inbound<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.framing.before_write(&[io::IoSlice::new(buf)]);
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.framing.before_write(bufs);
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn tracker() -> Tracker {
        Tracker::new(
            crate::server::framing::Limits {
                max_head_bytes: 8192,
                max_headers: 100,
            },
            std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
        )
    }

    #[tokio::test]
    async fn silence_fails_the_read_at_the_deadline() {
        let (a, _b) = tokio::io::duplex(64);
        let mut guarded = Inbound::new(a, Duration::from_millis(100), tracker());
        let started = Instant::now();
        let err = guarded.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_partial_preface_then_silence_fails_too() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut guarded = Inbound::new(a, Duration::from_millis(100), tracker());
        b.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(guarded.read(&mut buf).await.unwrap(), 16);
        let err = guarded.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn once_the_deciding_bytes_arrived_a_quiet_peer_is_hypers_business() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut guarded = Inbound::new(a, Duration::from_millis(50), tracker());
        b.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        assert!(guarded.read(&mut buf).await.unwrap() >= DECIDING_BYTES);
        let quiet = tokio::time::timeout(Duration::from_millis(300), guarded.read(&mut buf));
        assert!(quiet.await.is_err(), "still waiting, no error of ours");
    }
}
