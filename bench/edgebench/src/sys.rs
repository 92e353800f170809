//! The only raw syscalls: `sendmmsg(2)` and `recvmmsg(2)` on a connected datagram socket,
//! never blocking (`MSG_DONTWAIT`), and `shutdown(2)`. The first two let the DNS engine move
//! up to [`MAX_BATCH`] datagrams per syscall, where one `send`/`recv` per query would make the
//! generator, not the target, the bottleneck. `shutdown` is how the timeout watchdog ends an
//! operation that waits too long, instead of arming an io_uring timeout per read. [`Epoll`]
//! is the readiness source of the closed-loop TCP engine (see `scenario::rr_epoll`).

use std::io;
use std::os::fd::RawFd;

/// Datagrams per syscall at most.
pub const MAX_BATCH: usize = 64;

/// Sends each of `datagrams` (at most [`MAX_BATCH`]) as one datagram on the connected socket
/// `fd`; returns how many were sent (fewer when the socket buffer is full).
pub fn send_batch(fd: RawFd, datagrams: &[&[u8]]) -> io::Result<usize> {
    let n = datagrams.len().min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: iovec and mmsghdr are plain C structs for which all-zero is a valid value
    // (null pointers, zero lengths).
    let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        iovs[i].iov_base = datagrams[i].as_ptr() as *mut libc::c_void;
        iovs[i].iov_len = datagrams[i].len();
        msgs[i].msg_hdr.msg_iov = &mut iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `msgs[..n]` point at `iovs[..n]`, which point into `datagrams`; all outlive the
    // call, and the kernel only reads them. No address is given: the socket is connected.
    let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n as u32, libc::MSG_DONTWAIT) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Receives up to `lens.len()` (at most [`MAX_BATCH`]) datagrams into consecutive `stride`-byte
/// slots of `buf`; `lens[i]` is the length of datagram `i`. Returns how many arrived;
/// `WouldBlock` when none was waiting.
pub fn recv_batch(
    fd: RawFd,
    buf: &mut [u8],
    stride: usize,
    lens: &mut [usize],
) -> io::Result<usize> {
    let n = lens.len().min(MAX_BATCH).min(buf.len() / stride);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    let base = buf.as_mut_ptr();
    for i in 0..n {
        // SAFETY: i * stride + stride <= buf.len() by the choice of n.
        iovs[i].iov_base = unsafe { base.add(i * stride) } as *mut libc::c_void;
        iovs[i].iov_len = stride;
        msgs[i].msg_hdr.msg_iov = &mut iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every iovec covers a distinct, writable `stride`-byte slot of `buf`, which is
    // borrowed mutably for the call; no source address is requested; no timeout pointer.
    let r = unsafe {
        libc::recvmmsg(
            fd,
            msgs.as_mut_ptr(),
            n as u32,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let r = r as usize;
    for i in 0..r {
        lens[i] = msgs[i].msg_len as usize;
    }
    Ok(r)
}

/// Shuts both directions of the socket `fd`: a pending read returns 0 or fails, a pending
/// write fails. The descriptor stays open (its owner closes it).
pub fn shutdown(fd: RawFd) {
    // SAFETY: shutdown(2) only changes socket state; on a descriptor that is not a socket it
    // fails with ENOTSOCK, which is ignored. No memory is passed.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// Readiness interest of a registered socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    Read,
    Write,
}

/// An epoll instance (level-triggered), closed on drop.
pub struct Epoll {
    fd: RawFd,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointer; the result is checked.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll { fd })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        let events = match interest {
            Interest::Read => libc::EPOLLIN | libc::EPOLLRDHUP,
            Interest::Write => libc::EPOLLOUT,
        };
        let mut ev = libc::epoll_event {
            events: events as u32,
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call; the kernel copies it.
        cvt(unsafe { libc::epoll_ctl(self.fd, op, fd, &mut ev) }).map(drop)
    }

    pub fn add(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, interest)
    }

    pub fn modify(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, interest)
    }

    /// Stops watching `fd` (closing it does that too; this is for descriptors kept open).
    pub fn delete(&self, fd: RawFd) {
        // SAFETY: a null event pointer is allowed for EPOLL_CTL_DEL; errors are irrelevant here.
        unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
    }

    /// Waits up to `timeout_ms` (0 = poll) and returns the ready (token, error-or-hangup) pairs
    /// in `out`.
    pub fn wait(&self, out: &mut Vec<(u64, bool)>, max: usize, timeout_ms: i32) -> io::Result<()> {
        out.clear();
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 256];
        let max = max.clamp(1, events.len());
        // SAFETY: `events` has room for `max` entries and outlives the call.
        let n = unsafe { libc::epoll_wait(self.fd, events.as_mut_ptr(), max as i32, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        for ev in &events[..n as usize] {
            let bad = ev.events & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
            out.push((ev.u64, bad));
        }
        Ok(())
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: the descriptor is owned by this value and closed exactly once.
        unsafe { libc::close(self.fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn batches_round_trip_on_loopback() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        let mut buf = vec![0u8; 8 * 16];
        let mut lens = [0usize; 8];
        let none = recv_batch(b.as_raw_fd(), &mut buf, 16, &mut lens).unwrap_err();
        assert_eq!(none.kind(), io::ErrorKind::WouldBlock);
        let sent = send_batch(a.as_raw_fd(), &[b"one", b"three", b"fifteen-bytes.."]).unwrap();
        assert_eq!(sent, 3);
        let mut got = 0;
        for _ in 0..100 {
            match recv_batch(b.as_raw_fd(), &mut buf[got * 16..], 16, &mut lens[got..]) {
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            if got == 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, 3);
        assert_eq!(&buf[..lens[0]], b"one");
        assert_eq!(&buf[16..16 + lens[1]], b"three");
        assert_eq!(&buf[32..32 + lens[2]], b"fifteen-bytes..");
    }
}
