//! The few system calls glommio does not wrap for us: CPU affinity and resource limits.
//!
//! This is one of the two modules with `unsafe` (the other is the splice path of the proxy);
//! each block says why it is sound.

use std::io;

/// The CPUs this process may run on (its affinity mask), in ascending order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `set` is a plain bitmask struct; zeroed is a valid (empty) value, and
    // sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            let n = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
            return (0..n).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// The soft and hard limits of `resource`.
pub(crate) fn getrlimit(resource: libc::__rlimit_resource_t) -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(resource, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// The soft `RLIMIT_MEMLOCK` in bytes (`u64::MAX` when unlimited).
pub fn memlock_limit() -> io::Result<u64> {
    getrlimit(libc::RLIMIT_MEMLOCK).map(|(soft, _)| soft)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (a hub holds two descriptors per
/// forwarded connection, plus pipes when splicing). Returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let (soft, hard) = getrlimit(libc::RLIMIT_NOFILE)?;
    if soft >= hard {
        return Ok(soft);
    }
    let lim = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit; setrlimit only reads it.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(hard)
}

/// Blocks `signals` in the calling thread and every thread it starts afterwards, so that they
/// are only ever taken by [`wait_signal`]. Call before starting the shards.
pub fn block_signals(signals: &[libc::c_int]) -> io::Result<()> {
    let set = sigset(signals);
    // SAFETY: `set` is a valid, initialised sigset_t; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set; sigaddset only writes into it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Waits (blocking the calling thread, never a shard's) for one of `signals`, which must be
/// blocked already (see [`block_signals`]). Returns the signal taken.
pub fn wait_signal(signals: &[libc::c_int]) -> io::Result<libc::c_int> {
    let set = sigset(signals);
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is initialised and `sig` is a valid out-pointer for the call.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(sig)
}

/// Like [`wait_signal`], giving up after `timeout` (`None` then).
pub fn wait_signal_timeout(
    signals: &[libc::c_int],
    timeout: std::time::Duration,
) -> io::Result<Option<libc::c_int>> {
    let set = sigset(signals);
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` and `ts` are initialised; a null siginfo pointer is allowed.
    let rc = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(rc))
}

/// Many datagrams in one system call each way (`recvmmsg(2)` / `sendmmsg(2)`), for a UDP
/// server draining a burst. Buffers are allocated once; the kernel structures pointing into
/// them are rebuilt on every call, so nothing dangles if the batch moves between calls.
pub struct UdpBatch {
    rx: Box<[u8]>,
    rx_size: usize,
    lens: Box<[usize]>,
    addrs: Box<[libc::sockaddr_storage]>,
    addr_lens: Box<[libc::socklen_t]>,
    /// One answer per slot; empty = nothing to send for that slot.
    pub out: Box<[Vec<u8>]>,
    // Scratch for the kernel structures, reused so a call allocates nothing.
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    idx: Vec<usize>,
}

impl UdpBatch {
    /// A batch of `slots` datagrams of at most `rx_size` bytes each.
    pub fn new(slots: usize, rx_size: usize, out_capacity: usize) -> UdpBatch {
        UdpBatch {
            rx: vec![0u8; slots * rx_size].into_boxed_slice(),
            rx_size,
            lens: vec![0; slots].into_boxed_slice(),
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (AF_UNSPEC) value.
            addrs: vec![unsafe { std::mem::zeroed() }; slots].into_boxed_slice(),
            addr_lens: vec![0; slots].into_boxed_slice(),
            out: (0..slots)
                .map(|_| Vec::with_capacity(out_capacity))
                .collect(),
            iovs: Vec::with_capacity(slots),
            hdrs: Vec::with_capacity(slots),
            idx: Vec::with_capacity(slots),
        }
    }

    pub fn slots(&self) -> usize {
        self.lens.len()
    }

    /// Receives up to `slots` datagrams without waiting. `Ok(0)` when none is queued.
    pub fn recv(&mut self, fd: std::os::fd::RawFd) -> io::Result<usize> {
        let slots = self.slots();
        self.iovs.clear();
        for i in 0..slots {
            self.iovs.push(libc::iovec {
                iov_base: self.rx[i * self.rx_size..].as_mut_ptr().cast(),
                iov_len: self.rx_size,
            });
        }
        self.hdrs.clear();
        for i in 0..slots {
            // SAFETY: mmsghdr is plain old data; zeroed is a valid empty header.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(h);
        }
        let hdrs = &mut self.hdrs;
        // SAFETY: every header points at a live iovec and address slot owned by `self`/`iovs`,
        // each iovec at a distinct rx_size region of `self.rx`; all outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                slots as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        let n = n as usize;
        for (i, h) in hdrs.iter().take(n).enumerate() {
            self.lens[i] = h.msg_len as usize;
            self.addr_lens[i] = h.msg_hdr.msg_namelen;
        }
        Ok(n)
    }

    /// Datagram `i` of the last [`UdpBatch::recv`] (cut at `rx_size`) and its source.
    pub fn datagram(&self, i: usize) -> (&[u8], Option<std::net::SocketAddr>) {
        let data = &self.rx[i * self.rx_size..i * self.rx_size + self.lens[i].min(self.rx_size)];
        (data, sockaddr_to_std(&self.addrs[i]))
    }

    /// Sends every non-empty `out[i]` (for i < `count`) to the source of datagram `i`. Returns
    /// how many were handed to the kernel; the caller sends the rest another way.
    pub fn send(&mut self, fd: std::os::fd::RawFd, count: usize) -> io::Result<usize> {
        self.idx.clear();
        self.idx
            .extend((0..count).filter(|&i| !self.out[i].is_empty()));
        self.iovs.clear();
        for &i in &self.idx {
            self.iovs.push(libc::iovec {
                iov_base: self.out[i].as_ptr() as *mut libc::c_void,
                iov_len: self.out[i].len(),
            });
        }
        self.hdrs.clear();
        for (k, &i) in self.idx.iter().enumerate() {
            // SAFETY: as in `recv`: plain old data, zeroed is valid.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = self.addr_lens[i];
            h.msg_hdr.msg_iov = &mut self.iovs[k];
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(h);
        }
        let (hdrs, idx) = (&mut self.hdrs, &self.idx);
        let mut sent = 0;
        while sent < hdrs.len() {
            // SAFETY: headers point at live iovecs, answers and addresses owned by `self`,
            // which the kernel only reads; all outlive the call.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    hdrs[sent..].as_mut_ptr(),
                    (hdrs.len() - sent) as u32,
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                let e = io::Error::last_os_error();
                if n == 0 || e.kind() == io::ErrorKind::WouldBlock {
                    break;
                }
                // One bad destination must not stop the others: skip it.
                sent += 1;
                continue;
            }
            sent += n as usize;
        }
        // Mark what went out; what is left stays in `out` for the caller.
        for &i in &idx[..sent.min(idx.len())] {
            self.out[i].clear();
        }
        Ok(sent)
    }
}

/// A socket address from a `sockaddr_storage` filled by the kernel.
fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large
            // and aligned enough for.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Sends `payload` and the descriptors `fds` in one message on a Unix stream socket
/// (`SCM_RIGHTS`). At most 250 descriptors per call.
pub fn send_fds(
    sock: std::os::fd::RawFd,
    payload: &[u8],
    fds: &[std::os::fd::RawFd],
) -> io::Result<()> {
    assert!(fds.len() <= 250, "too many descriptors for one message");
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    let data_len = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
    let mut control = vec![0u8; space.max(1)];
    // SAFETY: msghdr is plain old data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the control buffer is CMSG_SPACE(data_len) bytes, so the first header and
        // its data fit; CMSG_FIRSTHDR/CMSG_DATA only compute addresses inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                data_len as usize,
            );
        }
    }
    // SAFETY: msg points at live iov, payload and control buffers for the whole call.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if (n as usize) != payload.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short handover message",
        ));
    }
    Ok(())
}

/// Receives one message sent by [`send_fds`]: its payload (at most `max` bytes) and the
/// descriptors it carried, each now owned by the caller.
pub fn recv_fds(
    sock: std::os::fd::RawFd,
    max: usize,
) -> io::Result<(Vec<u8>, Vec<std::os::fd::OwnedFd>)> {
    use std::os::fd::FromRawFd;
    let mut payload = vec![0u8; max];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: max,
    };
    // SAFETY: a pure size computation.
    let space = unsafe { libc::CMSG_SPACE((250 * std::mem::size_of::<libc::c_int>()) as u32) };
    let mut control = vec![0u8; space as usize];
    // SAFETY: msghdr is plain old data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    // SAFETY: msg points at live buffers for the whole call; MSG_CMSG_CLOEXEC marks received
    // descriptors close-on-exec.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    payload.truncate(n as usize);
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` (msg_controllen bytes); the CMSG_* walkers stay
    // inside it, and each SCM_RIGHTS payload is an array of ints the kernel just installed
    // in our table, so taking ownership of each is sound.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let count = ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<libc::c_int>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i));
                    fds.push(std::os::fd::OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other(
            "handover message lost descriptors (truncated)",
        ));
    }
    Ok((payload, fds))
}

/// Whether the process runs as root (effective uid 0).
/// Sets a TCP socket's congestion control (`TCP_CONGESTION`): one system call, no file read
/// (shards call it). [`explain_congestion_error`] turns a failure into an operator's message.
pub fn set_tcp_congestion(fd: std::os::fd::RawFd, name: &str) -> io::Result<()> {
    // SAFETY: `name` is valid for `name.len()` bytes, which the kernel only reads.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What the kernel offers, for a failed [`set_tcp_congestion`] of `name`. Reads `/proc/sys`:
/// startup and `doctor` only, never a shard.
pub fn explain_congestion_error(name: &str, e: io::Error) -> io::Error {
    let list = |what: &str| {
        read_sysctl(&format!("net.ipv4.tcp_{what}_congestion_control"))
            .unwrap_or_else(|_| "?".into())
    };
    let why = match e.raw_os_error() {
        Some(libc::ENOENT) => format!(
            "the kernel has no congestion control {name:?} (available: {}; others may need \
             `modprobe tcp_{name}`)",
            list("available")
        ),
        Some(libc::EPERM) => format!(
            "congestion control {name:?} is not allowed to this user (allowed: {}; \
             net.ipv4.tcp_allowed_congestion_control, or run with CAP_NET_ADMIN)",
            list("allowed")
        ),
        _ => format!("cannot set congestion control {name:?}: {e}"),
    };
    io::Error::new(e.kind(), why)
}

/// A sysctl's value (`net.core.somaxconn` reads `/proc/sys/net/core/somaxconn`), trimmed.
/// A file read: startup, reloads and `doctor` only, never a shard.
pub fn read_sysctl(key: &str) -> io::Result<String> {
    std::fs::read_to_string(format!("/proc/sys/{}", key.replace('.', "/")))
        .map(|s| s.trim().to_string())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Takes an exclusive advisory lock on `file` without waiting (`flock(LOCK_EX | LOCK_NB)`).
/// The lock lasts as long as the file stays open.
pub fn try_lock_exclusive(file: &std::fs::File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the fd is open for the duration of the call (borrowed from `file`).
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// This machine's host name (the default cluster node id).
pub fn hostname() -> io::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
}

/// The first IPv4 address (else IPv6) of an interface that is up and not loopback: the
/// cluster address of a hub told nothing better.
pub fn first_interface_addr() -> Option<std::net::IpAddr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut v4 = None;
    let mut v6 = None;
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        let up = ifa.ifa_flags & libc::IFF_UP as u32 != 0;
        let loopback = ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0;
        if !up || loopback || ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: a non-null ifa_addr points to a sockaddr of the family it names; copying at
        // most sizeof(sockaddr_storage) of it is what the family allows (in/in6 are smaller).
        let family = unsafe { (*ifa.ifa_addr).sa_family } as libc::c_int;
        let len = match family {
            libc::AF_INET => std::mem::size_of::<libc::sockaddr_in>(),
            libc::AF_INET6 => std::mem::size_of::<libc::sockaddr_in6>(),
            _ => continue,
        };
        // SAFETY: zeroed sockaddr_storage is valid; we copy `len` bytes of the family's size.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        unsafe {
            std::ptr::copy_nonoverlapping(
                ifa.ifa_addr.cast::<u8>(),
                (&mut ss as *mut libc::sockaddr_storage).cast::<u8>(),
                len,
            )
        };
        match sockaddr_to_std(&ss).map(|a| a.ip()) {
            Some(ip @ std::net::IpAddr::V4(_)) if v4.is_none() => v4 = Some(ip),
            Some(ip @ std::net::IpAddr::V6(v)) if v6.is_none() && !v.is_unicast_link_local() => {
                v6 = Some(ip)
            }
            _ => {}
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    v4.or(v6)
}

#[cfg(test)]
mod tests {
    #[test]
    fn at_least_one_cpu_is_allowed() {
        assert!(!super::allowed_cpus().is_empty());
        assert!(super::memlock_limit().unwrap() > 0);
    }

    /// A TCP socket's congestion control, as the kernel reports it.
    fn tcp_congestion(fd: std::os::fd::RawFd) -> std::io::Result<String> {
        let mut buf = [0u8; 16];
        let mut len = buf.len() as libc::socklen_t;
        // SAFETY: `buf` is valid for `len` bytes, which the kernel writes at most.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_CONGESTION,
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let b = &buf[..len as usize];
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        Ok(String::from_utf8_lossy(&b[..end]).into_owned())
    }

    #[test]
    fn congestion_control_is_set_and_read_back_or_explained() {
        use std::os::fd::AsRawFd;
        let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = s.as_raw_fd();
        // reno is built into every Linux kernel.
        super::set_tcp_congestion(fd, "reno").unwrap();
        assert_eq!(tcp_congestion(fd).unwrap(), "reno");
        let e = super::set_tcp_congestion(fd, "no_such_cc").unwrap_err();
        let msg = super::explain_congestion_error("no_such_cc", e).to_string();
        assert!(
            msg.contains("no congestion control \"no_such_cc\"") && msg.contains("reno"),
            "{msg}"
        );
        assert_eq!(
            tcp_congestion(fd).unwrap(),
            "reno",
            "a refusal changes nothing"
        );
    }
}
