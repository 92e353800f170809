//! Copying both ways between a terminated TLS stream and a backend, in one hand-written future.
//!
//! Plaintext cannot be spliced, so each direction owns one buffer, allocated once per
//! connection. The shape is [`crate::proxy::forward`]'s: both directions are polled from the same
//! `poll`, end of stream on one side half-closes the other (for TLS: `close_notify`, then the
//! TCP write side), an error ends both, and a connection silent both ways for the idle timeout
//! ends with `TimedOut`. A TLS write is flushed before the direction reads again, so rustls never
//! buffers more than one chunk for a slow client.

use futures_lite::{AsyncRead, AsyncWrite};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Plaintext bytes per read: one TLS record's worth.
pub const BUF: usize = 16 * 1024;
/// Chunks one direction moves per poll before yielding to the shard's other tasks.
const BUDGET: usize = 16;

struct Half {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Written but maybe not yet flushed (matters for TLS).
    unflushed: bool,
    eof: bool,
    done: bool,
    moved: u64,
}

impl Half {
    fn new() -> Half {
        Half {
            buf: vec![0u8; BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            unflushed: false,
            eof: false,
            done: false,
            moved: 0,
        }
    }

    fn poll<R, W>(&mut self, cx: &mut Context<'_>, src: &mut R, dst: &mut W) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        for _ in 0..BUDGET {
            while self.start < self.end {
                match Pin::new(&mut *dst).poll_write(cx, &self.buf[self.start..self.end]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        self.start += n;
                        self.moved += n as u64;
                        self.unflushed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if self.unflushed {
                match Pin::new(&mut *dst).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.unflushed = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if self.eof {
                // close_notify + shutdown(SHUT_WR) for TLS, shutdown(SHUT_WR) for TCP. A peer
                // already gone cannot be half-closed; the other direction sees the error.
                return match Pin::new(&mut *dst).poll_close(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(_) => {
                        self.done = true;
                        Poll::Ready(Ok(()))
                    }
                };
            }
            match Pin::new(&mut *src).poll_read(cx, &mut self.buf) {
                Poll::Ready(Ok(0)) => self.eof = true,
                Poll::Ready(Ok(n)) => {
                    self.start = 0;
                    self.end = n;
                }
                // A TLS peer that closes TCP without close_notify: end of stream, as HAProxy and
                // nginx treat it; truncation is the peer's own doing.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => self.eof = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Bytes moved each way and how it ended.
pub struct Outcome {
    pub up: u64,
    pub down: u64,
    pub result: io::Result<()>,
}

/// Copies between `client` and `backend` until both directions end, one fails, or nothing moves
/// for `idle`.
pub async fn relay<C, B>(client: &mut C, backend: &mut B, idle: Duration) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut r = Relay {
        client,
        backend,
        up: Half::new(),
        down: Half::new(),
        idle: crate::proxy::idle::IdleTimer::new(idle),
    };
    let result = (&mut r).await;
    Outcome {
        up: r.up.moved,
        down: r.down.moved,
        result,
    }
}

struct Relay<'a, C, B> {
    client: &'a mut C,
    backend: &'a mut B,
    up: Half,
    down: Half,
    idle: crate::proxy::idle::IdleTimer,
}

impl<C, B> Future for Relay<'_, C, B>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = this.up.moved + this.down.moved;
        let up = this.up.poll(cx, this.client, this.backend)?;
        let down = this.down.poll(cx, this.backend, this.client)?;
        if up.is_ready() && down.is_ready() {
            return Poll::Ready(Ok(()));
        }
        let moved = this.up.moved + this.down.moved != before;
        this.idle.check(cx, moved)?;
        Poll::Pending
    }
}
