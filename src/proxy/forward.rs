//! Forwarding bytes both ways between a client and a backend, in one hand-written future.
//!
//! Each direction is a small state machine driven from the same `poll`, so both directions run
//! concurrently in one task and each borrows the two streams only for the length of a call.
//! Order within a direction: bytes held in a buffer go first, then bytes waiting in the pipe,
//! then new bytes are read. End of stream on one side half-closes the other side (`shutdown`
//! for writing) and the opposite direction carries on; an error on either side ends both. If no
//! byte moves either way for the idle timeout, the connection ends with `TimedOut`.
//!
//! Two ways to move bytes, per direction:
//! - copy: `recv` into a pooled buffer, async `send` out of it. The buffer returns to the pool
//!   as soon as it is written out, and a read that finds nothing returns it at once (glommio's
//!   reads are readiness-based, so a pending read holds no buffer).
//! - splice: `splice(2)` socket → pipe → socket, the bytes never entering user space. When the
//!   source has nothing, the direction falls back to a copy read, which is what waits for
//!   readability; when the destination is full, up to one buffer is read out of the pipe and
//!   goes through the async write, which is what waits for writability.
//!
//! Never allocates per chunk: buffers and pipes come from the shard's [`pool`](super::pool).

use super::pool;
use super::sock::Sock;
use super::splice::{self, Pipe};
use crate::config::SpliceMode;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// What can be forwarded: a glommio stream (TLS passthrough's client) or an epoll-driven
/// [`Sock`].
pub trait Stream: AsyncRead + AsyncWrite + AsRawFd + Unpin {
    /// Already non-blocking, as `splice` needs (no `fcntl` to make it so).
    fn nonblocking(&self) -> bool {
        false
    }
}

impl Stream for TcpStream {}

impl Stream for Sock {
    fn nonblocking(&self) -> bool {
        true
    }
}

fn make_nonblocking(s: &impl Stream) -> io::Result<()> {
    if s.nonblocking() {
        Ok(())
    } else {
        splice::set_nonblocking(s.as_raw_fd())
    }
}

/// Chunks one direction moves per poll before yielding to the other tasks of the shard.
const BUDGET: usize = 16;

/// Bytes read and not yet written.
struct Chunk {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

/// One direction: from `src` to `dst`.
struct Direction {
    pending: Option<Chunk>,
    pipe: Option<Pipe>,
    /// Try `splice` before copying.
    splice: bool,
    /// Switch to `splice` once a read fills a whole buffer (a bulk transfer).
    auto: bool,
    /// Capacity asked for new pipes.
    pipe_size: usize,
    /// `src` reached end of stream; `dst` is shut down once everything is written.
    eof: bool,
    /// Finished: `dst` was shut down for writing.
    done: bool,
    /// Bytes written to `dst`.
    moved: u64,
}

impl Direction {
    fn new(mode: SpliceMode, pipe_size: usize) -> Direction {
        Direction {
            pending: None,
            pipe: None,
            splice: mode == SpliceMode::Always,
            auto: mode == SpliceMode::Auto,
            pipe_size,
            eof: false,
            done: false,
            moved: 0,
        }
    }

    /// `other_done`: the opposite direction has finished, so the connection closes as soon as
    /// this one does.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut impl Stream,
        dst: &mut impl Stream,
        other_done: bool,
    ) -> Poll<io::Result<()>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        for _ in 0..BUDGET {
            // 1. Bytes already in user space go first.
            if let Some(chunk) = &mut self.pending {
                while chunk.start < chunk.end {
                    match Pin::new(&mut *dst).poll_write(cx, &chunk.buf[chunk.start..chunk.end]) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()))
                        }
                        Poll::Ready(Ok(n)) => {
                            chunk.start += n;
                            self.moved += n as u64;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                if let Some(chunk) = self.pending.take() {
                    pool::put_buf(chunk.buf);
                }
            }
            // 2. Then the bytes waiting in the pipe.
            if let Some(pipe) = &mut self.pipe {
                match pipe.flush_to(dst.as_raw_fd(), &mut self.moved) {
                    Ok(()) => {
                        if let Some(pipe) = self.pipe.take() {
                            pool::put_pipe(pipe);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // The destination is full: move the head of the pipe through the async
                        // write, which waits for room.
                        let mut buf = pool::take_buf();
                        match pipe.drain_into(&mut buf) {
                            Ok(n) => {
                                self.pending = Some(Chunk {
                                    buf,
                                    start: 0,
                                    end: n,
                                });
                                continue;
                            }
                            Err(e) => {
                                pool::put_buf(buf);
                                return Poll::Ready(Err(e));
                            }
                        }
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            if self.eof {
                // A peer that already went away cannot be half-closed; the other direction
                // will see the error itself. When the other direction is over, the close that
                // follows sends the FIN (`dst` has nothing unread: its end of stream was read),
                // so the shutdown call is skipped.
                if !other_done {
                    let _ = splice::shutdown_write(dst.as_raw_fd());
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            // 3. Read more: splice when asked to, else (or when the source is idle) copy.
            if self.splice {
                if let Some(mut pipe) = pool::take_pipe(self.pipe_size) {
                    match pipe.fill_from(src.as_raw_fd()) {
                        Ok(0) => {
                            pool::put_pipe(pipe);
                            self.eof = true;
                            continue;
                        }
                        Ok(_) => {
                            self.pipe = Some(pipe);
                            continue;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => pool::put_pipe(pipe),
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
            }
            let mut buf = pool::take_buf();
            match Pin::new(&mut *src).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(0)) => {
                    pool::put_buf(buf);
                    self.eof = true;
                }
                Poll::Ready(Ok(n)) => {
                    if self.auto && n == buf.len() {
                        // A bulk transfer: splice from now on. Only now are the sockets made
                        // non-blocking, so that small request/response connections never pay
                        // the fcntl calls; if that fails, keep copying.
                        self.auto = false;
                        self.splice = make_nonblocking(src)
                            .and_then(|()| make_nonblocking(dst))
                            .map_err(|e| {
                                log::debug!("cannot make sockets non-blocking ({e}); copying")
                            })
                            .is_ok();
                    }
                    self.pending = Some(Chunk {
                        buf,
                        start: 0,
                        end: n,
                    });
                }
                Poll::Ready(Err(e)) => {
                    pool::put_buf(buf);
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {
                    pool::put_buf(buf);
                    return Poll::Pending;
                }
            }
        }
        // Budget spent with work left: let the shard's other tasks run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Gives back what this direction holds (a pipe with bytes in it is closed).
    fn release(&mut self) {
        if let Some(chunk) = self.pending.take() {
            pool::put_buf(chunk.buf);
        }
        if let Some(pipe) = self.pipe.take() {
            pool::put_pipe(pipe);
        }
    }
}

/// How a forwarded connection ended.
#[derive(Debug)]
pub struct Outcome {
    /// Bytes client → backend and backend → client.
    pub up: u64,
    pub down: u64,
    /// `Ok` when both directions reached end of stream.
    pub result: io::Result<()>,
}

/// How to forward: from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub mode: SpliceMode,
    /// Capacity of splice pipes, bytes.
    pub pipe_size: usize,
    /// Close when nothing moved either way for this long.
    pub idle: Duration,
}

/// Forwards between `client` and `backend` until both directions end, one fails, or nothing
/// moves for `opts.idle`. Both streams are closed when it returns.
pub async fn forward(client: impl Stream, backend: impl Stream, opts: Options) -> Outcome {
    let Options {
        mut mode,
        pipe_size,
        idle,
    } = opts;
    if mode == SpliceMode::Always {
        // splice(2) would sleep on a blocking socket; without O_NONBLOCK, copy. (`auto` does
        // this when a direction switches to splice.)
        if let Err(e) = make_nonblocking(&client).and_then(|()| make_nonblocking(&backend)) {
            log::debug!("cannot make sockets non-blocking ({e}); copying");
            mode = SpliceMode::Never;
        }
    }
    let mut fwd = Forward {
        client,
        backend,
        up: Direction::new(mode, pipe_size),
        down: Direction::new(mode, pipe_size),
        idle: super::idle::IdleTimer::new(idle),
    };
    let result = (&mut fwd).await;
    fwd.up.release();
    fwd.down.release();
    Outcome {
        up: fwd.up.moved,
        down: fwd.down.moved,
        result,
    }
}

struct Forward<C, B> {
    client: C,
    backend: B,
    up: Direction,
    down: Direction,
    idle: super::idle::IdleTimer,
}

impl<C: Stream, B: Stream> Future for Forward<C, B> {
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = this.up.moved + this.down.moved;
        let up = this
            .up
            .poll(cx, &mut this.client, &mut this.backend, this.down.done)?;
        let down = this
            .down
            .poll(cx, &mut this.backend, &mut this.client, this.up.done)?;
        if up.is_ready() && down.is_ready() {
            return Poll::Ready(Ok(()));
        }
        let moved = this.up.moved + this.down.moved != before;
        this.idle.check(cx, moved)?;
        Poll::Pending
    }
}
