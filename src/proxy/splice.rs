//! The file-descriptor system calls of the proxy that glommio does not wrap: `splice(2)` through
//! a pipe, pipe creation and sizing, `O_NONBLOCK`, and `shutdown(2)` from inside a poll function.
//!
//! This is one of the two modules with `unsafe` (the other is [`crate::sys`]); each block says
//! why it is sound. Nothing here blocks: pipes are created `O_NONBLOCK`, splices pass
//! `SPLICE_F_NONBLOCK`, and the sockets spliced from and to are switched to `O_NONBLOCK` first
//! ([`set_nonblocking`]) because `SPLICE_F_NONBLOCK` only covers the pipe end of a splice.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The kernel's default pipe capacity (16 pages).
pub const DEFAULT_PIPE_SIZE: usize = 64 * 1024;

/// A pipe used as an in-kernel buffer between two sockets, and how many bytes it holds.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes spliced in and not yet spliced or read out.
    len: usize,
    /// The pipe's capacity in bytes.
    cap: usize,
}

fn cvt(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Retries a call interrupted by a signal.
fn retry(mut f: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    retry(|| {
        // SAFETY: null offsets are what pipes and sockets require; the kernel validates both
        // descriptors, and no memory of this process is read or written.
        cvt(unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
            )
        })
    })
}

impl Pipe {
    /// A new empty pipe, both ends `O_NONBLOCK`, resized to `size` bytes when that is larger than
    /// the default (best effort: the kernel may refuse above `/proc/sys/fs/pipe-max-size` or the
    /// per-user pipe budget, and the pipe then keeps its default size).
    pub fn new(size: usize) -> io::Result<Pipe> {
        let mut fds: [libc::c_int; 2] = [-1, -1];
        // SAFETY: `fds` is a writable array of two ints, which is what pipe2 fills.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut cap = DEFAULT_PIPE_SIZE;
        if size > cap {
            // SAFETY: fcntl(F_SETPIPE_SZ) on a pipe we own, with an int argument as it expects.
            let got =
                unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
            if got > 0 {
                cap = got as usize;
            }
        }
        Ok(Pipe {
            read,
            write,
            len: 0,
            cap,
        })
    }

    /// Bytes waiting in the pipe.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Moves what the socket `src` has received into the pipe, up to the pipe's free space.
    /// `Ok(0)` is end of stream when the pipe had room; `WouldBlock` when `src` has nothing
    /// (call it on an empty pipe, so that a full pipe cannot be mistaken for an idle socket).
    pub fn fill_from(&mut self, src: RawFd) -> io::Result<usize> {
        let room = self.cap - self.len;
        let n = splice(src, self.write.as_raw_fd(), room)?;
        self.len += n;
        Ok(n)
    }

    /// Moves bytes from the pipe into the socket `dst` until the pipe is empty (`Ok`) or the
    /// socket's send buffer is full (`WouldBlock`). Returns the bytes moved, in both cases via
    /// `moved`.
    pub fn flush_to(&mut self, dst: RawFd, moved: &mut u64) -> io::Result<()> {
        while self.len > 0 {
            let n = splice(self.read.as_raw_fd(), dst, self.len)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.len -= n;
            *moved += n as u64;
        }
        Ok(())
    }

    /// Reads bytes out of the pipe into `buf` (used when the destination is full: the bytes then
    /// travel through the stream's async write, which waits for the socket to drain).
    pub fn drain_into(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(self.len);
        let n = retry(|| {
            // SAFETY: `buf` is valid for writes of `want <= buf.len()` bytes for the call.
            cvt(unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), want) })
        })?;
        self.len -= n;
        Ok(n)
    }
}

/// Puts the socket `fd` in non-blocking mode, so that `splice` (or `accept4`) never sleeps on
/// it. A no-op on one that already is (the shard's own sockets are created non-blocking).
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL only read and write the descriptor's status flags; an invalid fd
    // yields EBADF.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        if flags & libc::O_NONBLOCK == 0
            && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Half-closes the socket `fd` for writing (sends FIN once queued data is out). Synchronous and
/// immediate, so it can be called from inside a poll function.
pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown(2) takes no memory; an invalid fd yields EBADF.
    if unsafe { libc::shutdown(fd, libc::SHUT_WR) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A second glommio stream on a duplicate of `s`'s descriptor (same socket), for tests that
/// read and write one socket from two tasks.
#[cfg(test)]
pub fn dup_stream(s: &glommio::net::TcpStream) -> io::Result<glommio::net::TcpStream> {
    use std::os::fd::{FromRawFd as _, IntoRawFd};
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) takes no memory; on success the new descriptor is open and
    // ours alone.
    let new = unsafe { libc::fcntl(s.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is an open TCP socket descriptor owned by nobody else; OwnedFd then the
    // glommio stream take ownership of it in turn.
    let fd = unsafe { OwnedFd::from_raw_fd(new) };
    Ok(unsafe { glommio::net::TcpStream::from_raw_fd(fd.into_raw_fd()) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn splices_socket_to_socket_through_a_pipe() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l2.local_addr().unwrap()).unwrap();
        let (mut d, _) = l2.accept().unwrap();
        set_nonblocking(b.as_raw_fd()).unwrap();
        set_nonblocking(c.as_raw_fd()).unwrap();

        let mut pipe = Pipe::new(256 * 1024).unwrap();
        assert!(pipe.cap >= DEFAULT_PIPE_SIZE);
        // Nothing sent yet: would block, not EOF.
        assert_eq!(
            pipe.fill_from(b.as_raw_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        a.write_all(b"hello splice").unwrap();
        let mut got = 0;
        while got < 12 {
            match pipe.fill_from(b.as_raw_fd()) {
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(pipe.len(), 12);
        let mut small = [0u8; 6];
        assert_eq!(pipe.drain_into(&mut small).unwrap(), 6);
        assert_eq!(&small, b"hello ");
        let mut moved = 0;
        pipe.flush_to(c.as_raw_fd(), &mut moved).unwrap();
        assert_eq!(moved, 6);
        assert!(pipe.is_empty());
        let mut out = [0u8; 6];
        d.read_exact(&mut out).unwrap();
        assert_eq!(&out, b"splice");

        // EOF: the pipe had room and splice returned 0.
        drop(a);
        loop {
            match pipe.fill_from(b.as_raw_fd()) {
                Ok(0) => break,
                Ok(n) => panic!("unexpected {n} bytes"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        shutdown_write(c.as_raw_fd()).unwrap();
        assert_eq!(d.read(&mut out).unwrap(), 0);
    }
}
