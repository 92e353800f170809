//! A non-blocking TCP socket driven by the shard's epoll [`reactor`](super::reactor): what the
//! forwarding path uses for accepted clients and for backend connections.
//!
//! Reads and writes are plain `recv`/`send` calls made when the socket may be ready; `EAGAIN`
//! (or a short read or write) clears the flag and the task waits for the next edge. Accepting
//! is a plain `accept4` when the listener may be ready, so dropping an accept in progress never
//! takes a connection (what `until_drain` and socket handover rely on). Connecting is a
//! non-blocking `connect` raced against a glommio timer.

use super::reactor::{Registration, READ, WRITE};
use futures_lite::{AsyncRead, AsyncWrite};
use socket2::{Domain, SockAddr, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// A connected, non-blocking TCP socket in the shard's epoll set.
pub struct Sock {
    // Declaration order is drop order: the registration goes before the descriptor closes.
    reg: Registration,
    fd: OwnedFd,
    peer: SocketAddr,
}

impl Sock {
    /// Takes over a connected non-blocking socket.
    fn adopt(fd: OwnedFd, peer: SocketAddr, ready: u8) -> io::Result<Sock> {
        let reg = Registration::new(fd.as_raw_fd(), ready)?;
        Ok(Sock { reg, fd, peer })
    }

    /// Connects to `addr` within `timeout`, with `TCP_NODELAY` set and, if given, that
    /// congestion control.
    pub async fn connect(
        addr: SocketAddr,
        timeout: Duration,
        congestion: Option<&str>,
    ) -> io::Result<Sock> {
        let sock = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking().cloexec(),
            None,
        )?;
        sock.set_nodelay(true)?;
        if let Some(name) = congestion {
            // Checked at startup (the listeners set it first), so this fails only if the
            // module went away since; the connection then uses the system's.
            if let Err(e) = crate::sys::set_tcp_congestion(sock.as_raw_fd(), name) {
                log::debug!("proxy: to {addr}: {e}");
            }
        }
        let pending = match sock.connect(&SockAddr::from(addr)) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => true,
            Err(e) => return Err(e),
        };
        let fd = OwnedFd::from(sock);
        if !pending {
            return Sock::adopt(fd, addr, READ | WRITE);
        }
        let s = Sock::adopt(fd, addr, 0)?;
        let connected = async {
            futures_lite::future::poll_fn(|cx| s.reg.poll_ready(cx, WRITE)).await;
            true
        };
        let timed_out = async {
            glommio::timer::Timer::new(timeout).await;
            false
        };
        if !futures_lite::future::or(connected, timed_out).await {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
        }
        // Writable without an error or hang-up: connected (no `getsockopt` needed).
        if !s.reg.is_closed(WRITE) {
            return Ok(s);
        }
        match s.socket().take_error()? {
            Some(e) => Err(e),
            None => Ok(s),
        }
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    fn socket(&self) -> std::mem::ManuallyDrop<Socket> {
        // SAFETY: a view of our descriptor that never closes it.
        std::mem::ManuallyDrop::new(unsafe { Socket::from_raw_fd(self.fd.as_raw_fd()) })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket()
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))
    }

    pub fn nodelay(&self) -> io::Result<bool> {
        self.socket().nodelay()
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.socket().set_nodelay(on)
    }
}

impl AsRawFd for Sock {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Sock {
    /// The loop every operation shares: when `dir` may be ready, make the syscall `op` (its
    /// return value, -1 and `errno` on failure); a result short of `want` means the socket was
    /// drained (reading) or filled (writing), so the flag is cleared and the next operation
    /// waits for an edge; `EAGAIN` clears it and waits at once.
    fn poll_op(
        &mut self,
        cx: &mut Context<'_>,
        dir: u8,
        want: usize,
        mut op: impl FnMut(RawFd) -> isize,
    ) -> Poll<io::Result<usize>> {
        loop {
            if self.reg.poll_ready(cx, dir).is_pending() {
                return Poll::Pending;
            }
            let n = op(self.fd.as_raw_fd());
            if n >= 0 {
                let n = n as usize;
                // A read of 0 is the end of stream, not an empty queue.
                if n < want && !(dir == READ && n == 0) {
                    self.reg.clear(dir);
                }
                return Poll::Ready(Ok(n));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => self.reg.clear(dir),
                Some(libc::EINTR) => {}
                _ => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncRead for Sock {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let len = buf.len();
        // SAFETY: `buf` is valid for its length.
        self.get_mut().poll_op(cx, READ, len, |fd| unsafe {
            libc::recv(fd, buf.as_mut_ptr().cast(), len, 0)
        })
    }
}

impl AsyncWrite for Sock {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // SAFETY: `buf` is valid for its length.
        self.get_mut().poll_op(cx, WRITE, buf.len(), |fd| unsafe {
            libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL)
        })
    }

    /// One `sendmsg` for every buffer (up to `IOV_MAX`): rustls hands over a TLS flight as
    /// one buffer per record, and a `send` each would put each record in its own segment and
    /// wake the peer once per record.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let bufs = &bufs[..bufs.len().min(1024)];
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix; the kernel only reads the
        // buffers; a zeroed `msghdr` has no address and no control data.
        self.get_mut().poll_op(cx, WRITE, total, |fd| unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = bufs.len() as _;
            libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL)
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.socket().shutdown(std::net::Shutdown::Write) {
            Err(e) if e.raw_os_error() != Some(libc::ENOTCONN) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// Accepts from a listener (non-blocking, owned elsewhere) through the shard's epoll set.
pub struct Acceptor {
    reg: Registration,
    fd: RawFd,
}

impl Acceptor {
    /// `listener` must outlive the acceptor. It is made non-blocking if it is not (the
    /// shards bind theirs non-blocking; one inherited from elsewhere might not be, and a
    /// blocking `accept4` would stall the shard).
    pub fn new(listener: &impl AsRawFd) -> io::Result<Acceptor> {
        let fd = listener.as_raw_fd();
        super::splice::set_nonblocking(fd)?;
        Ok(Acceptor {
            reg: Registration::new_shared(fd, READ)?,
            fd,
        })
    }

    /// The next connection: non-blocking, close-on-exec, with its peer's address.
    pub async fn accept(&self) -> io::Result<Sock> {
        futures_lite::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Sock>> {
        loop {
            if self.reg.poll_ready(cx, READ).is_pending() {
                return Poll::Pending;
            }
            // SAFETY: `storage` is large enough for any address; `len` says its size.
            let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            let fd = unsafe {
                libc::accept4(
                    self.fd,
                    (&mut storage as *mut libc::sockaddr_storage).cast(),
                    &mut len,
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd >= 0 {
                // SAFETY: a fresh descriptor nobody else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                // SAFETY: the kernel filled `len` bytes of `storage`.
                let addr = unsafe { SockAddr::new(storage, len) };
                let Some(peer) = addr.as_socket() else {
                    continue;
                };
                return Poll::Ready(Sock::adopt(fd, peer, READ | WRITE));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => self.reg.clear(READ),
                // The connection went away before it was taken, or a signal: the next one.
                Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO) => {}
                _ => return Poll::Ready(Err(e)),
            }
        }
    }
}
