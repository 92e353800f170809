//! Socket readiness for the forwarding path: one edge-triggered epoll instance per shard,
//! watched by glommio with a single io_uring poll only when there is nothing else to do.
//!
//! Why not glommio's own readiness: glommio waits for each socket with one io_uring
//! `POLL_ADD` per wait, and the kernel completes each such poll with task work that interrupts
//! the shard's thread (an inter-processor interrupt, a VM exit on both sides here) whenever it
//! is running, which under load is always. On this VM that interrupt cost more than the `recv`
//! it announced: about 5 µs per wait, two waits per proxied request (docs/perf-proxy.md).
//! epoll's wake-up callback only links the socket into a ready list; nothing interrupts the
//! shard. The driver task here harvests the list with a non-blocking `epoll_wait` each time it
//! runs, wakes the tasks whose sockets became ready, and while it keeps finding events it only
//! yields, so under load readiness costs a fraction of one syscall per event. When a harvest
//! finds nothing, it arms one glommio poll on the epoll descriptor and sleeps, so an idle
//! shard still sleeps in io_uring as before.
//!
//! Every socket is registered once, edge-triggered, for reading and writing. A
//! [`Registration`] keeps per direction a *ready* flag and the waker of the task waiting on
//! it. Only the driver sets flags (from events); operations clear them when the kernel says
//! `EAGAIN` (or a read or write comes back short), so a flag is never lost: an edge that
//! arrives after the operation cleared it is in epoll's ready list and sets it again at the
//! next harvest. All of it is thread-local: a shard never shares a registration.
//!
//! A slot is identified in the event by index and generation, so an event still queued for a
//! socket closed meanwhile (its slot reused) is ignored. Sockets are removed from the epoll
//! set by the kernel when closed; a listener, whose file may live on in another process after
//! a socket handover, is removed explicitly ([`Registration::new_shared`]).

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Direction flags.
pub const READ: u8 = 1;
pub const WRITE: u8 = 2;
/// The direction's end came (end of stream, hang-up or error): ready for good. Kept apart
/// from `READ`/`WRITE` because a short read clears `READ`, and the edge that announced the
/// end does not come again: a read that returns the last data bytes before an end of stream
/// already harvested must not make the reader wait for an edge.
const CLOSED_SHIFT: u8 = 2;

/// Events harvested per `epoll_wait`.
const BATCH: usize = 256;

struct Slot {
    generation: u32,
    ready: u8,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

pub struct Reactor {
    epfd: OwnedFd,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u32>>,
    /// Registrations live now (a gauge for tests and metrics).
    live: Cell<usize>,
    /// Harvests and events (for the benchmark notes).
    harvests: Cell<u64>,
    events: Cell<u64>,
    sleeps: Cell<u64>,
}

thread_local! {
    /// The reactor of the glommio executor running on this thread, keyed by its id: a thread
    /// that runs several executors one after the other (tests) gets a fresh one for each.
    static CURRENT: RefCell<Option<(usize, Rc<Reactor>)>> = const { RefCell::new(None) };
}

/// The reactor of the current shard, created (with its driver task) on first use.
pub fn current() -> io::Result<Rc<Reactor>> {
    let id = glommio::executor().id();
    CURRENT.with(|cur| {
        let mut cur = cur.borrow_mut();
        if let Some((owner, r)) = &*cur {
            if *owner == id {
                return Ok(r.clone());
            }
        }
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let r = Rc::new(Reactor {
            // SAFETY: a fresh descriptor that nothing else owns.
            epfd: unsafe { OwnedFd::from_raw_fd(fd) },
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            live: Cell::new(0),
            harvests: Cell::new(0),
            events: Cell::new(0),
            sleeps: Cell::new(0),
        });
        glommio::spawn_local(drive(Rc::downgrade(&r))).detach();
        *cur = Some((id, r.clone()));
        Ok(r)
    })
}

/// Counters of the current shard's reactor: (live registrations, harvests, events, sleeps).
pub fn stats() -> Option<(usize, u64, u64, u64)> {
    CURRENT.with(|cur| {
        cur.borrow().as_ref().map(|(_, r)| {
            (
                r.live.get(),
                r.harvests.get(),
                r.events.get(),
                r.sleeps.get(),
            )
        })
    })
}

impl Reactor {
    /// Wakes the waiters of the events in `events`.
    fn dispatch(&self, events: &[libc::epoll_event]) {
        let mut slots = self.slots.borrow_mut();
        let mut wake: [Option<Waker>; 2] = [None, None];
        for ev in events {
            let data = ev.u64;
            let (idx, generation) = (data as u32 as usize, (data >> 32) as u32);
            let Some(slot) = slots.get_mut(idx) else {
                continue;
            };
            if slot.generation != generation {
                continue;
            }
            let bits = ev.events;
            let err = (libc::EPOLLHUP | libc::EPOLLERR) as u32 & bits != 0;
            let rdhup = libc::EPOLLRDHUP as u32 & bits != 0;
            if bits & libc::EPOLLIN as u32 != 0 || rdhup || err {
                slot.ready |= READ;
                if rdhup || err {
                    slot.ready |= READ << CLOSED_SHIFT;
                }
                wake[0] = slot.reader.take();
            }
            if bits & libc::EPOLLOUT as u32 != 0 || err {
                slot.ready |= WRITE;
                if err {
                    slot.ready |= WRITE << CLOSED_SHIFT;
                }
                wake[1] = slot.writer.take();
            }
            // Wakers run outside the borrow: a glommio waker only queues its task, but keep
            // the invariant obvious.
            for w in wake.iter_mut() {
                if let Some(w) = w.take() {
                    drop(slots);
                    w.wake();
                    slots = self.slots.borrow_mut();
                }
            }
        }
    }

    /// One non-blocking harvest; the number of events.
    fn harvest(&self, buf: &mut [libc::epoll_event]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` events; timeout 0 never sleeps.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len() as libc::c_int,
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        self.harvests.set(self.harvests.get() + 1);
        self.events.set(self.events.get() + n as u64);
        self.dispatch(&buf[..n]);
        Ok(n)
    }
}

/// The driver: harvests while there are events, yielding between harvests so the tasks it
/// woke run; sleeps on one io_uring poll of the epoll descriptor when a harvest is empty.
async fn drive(reactor: std::rc::Weak<Reactor>) {
    let mut buf = vec![libc::epoll_event { events: 0, u64: 0 }; BATCH];
    loop {
        let Some(r) = reactor.upgrade() else {
            return;
        };
        match r.harvest(&mut buf) {
            Ok(0) => {
                r.sleeps.set(r.sleeps.get() + 1);
                let fd = r.epfd.as_raw_fd();
                // Hold the reactor (and so the descriptor) across the wait.
                if let Err(e) = glommio::net::wait_readable(fd).await {
                    log::warn!("epoll wait failed: {e}");
                    glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                }
                drop(r);
            }
            Ok(n) if n == BATCH => {
                drop(r);
                glommio::yield_if_needed().await;
            }
            Ok(_) => {
                drop(r);
                futures_lite::future::yield_now().await;
            }
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => {
                log::warn!("epoll_wait failed: {e}");
                drop(r);
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    }
}

/// One file descriptor in the shard's epoll set. Not `Send`: it belongs to its shard.
pub struct Registration {
    reactor: Rc<Reactor>,
    idx: u32,
    generation: u32,
    /// Remove from the epoll set explicitly when dropped (the file may outlive our descriptor).
    shared: Option<RawFd>,
}

impl Registration {
    /// Registers `fd` (non-blocking) for both directions, edge-triggered. `ready`: the
    /// directions to try before any event came (a fresh connected socket can be written and
    /// read at once; a connecting one neither).
    pub fn new(fd: RawFd, ready: u8) -> io::Result<Registration> {
        Self::register(fd, ready, false)
    }

    /// As [`new`](Self::new), for a descriptor whose file may stay open elsewhere (a
    /// listener shared with a successor process): removed from the epoll set on drop.
    pub fn new_shared(fd: RawFd, ready: u8) -> io::Result<Registration> {
        Self::register(fd, ready, true)
    }

    fn register(fd: RawFd, ready: u8, shared: bool) -> io::Result<Registration> {
        let reactor = current()?;
        let (idx, generation) = {
            let mut slots = reactor.slots.borrow_mut();
            match reactor.free.borrow_mut().pop() {
                Some(idx) => {
                    let slot = &mut slots[idx as usize];
                    slot.ready = ready;
                    (idx, slot.generation)
                }
                None => {
                    slots.push(Slot {
                        generation: 0,
                        ready,
                        reader: None,
                        writer: None,
                    });
                    ((slots.len() - 1) as u32, 0)
                }
            }
        };
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: (generation as u64) << 32 | idx as u64,
        };
        // SAFETY: plain syscall on descriptors we hold; `ev` is valid.
        let rc =
            unsafe { libc::epoll_ctl(reactor.epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        let err = (rc < 0).then(io::Error::last_os_error);
        reactor.live.set(reactor.live.get() + 1);
        let reg = Registration {
            reactor,
            idx,
            generation,
            // Not in the set when the add failed: nothing to remove on drop.
            shared: (shared && err.is_none()).then_some(fd),
        };
        match err {
            Some(e) => Err(e),
            None => Ok(reg),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Slot) -> T) -> T {
        let mut slots = self.reactor.slots.borrow_mut();
        let slot = &mut slots[self.idx as usize];
        debug_assert_eq!(slot.generation, self.generation);
        f(slot)
    }

    /// Whether an end (hang-up or error) was seen for `dir`.
    #[inline]
    pub fn is_closed(&self, dir: u8) -> bool {
        self.with(|s| s.ready & dir << CLOSED_SHIFT != 0)
    }

    /// The kernel said `EAGAIN` for `dir` (or a short read or write showed it is drained).
    #[inline]
    pub fn clear(&self, dir: u8) {
        self.with(|s| s.ready &= !dir)
    }

    /// Ready when `dir` may be ready; otherwise the task's waker is kept for the next event.
    pub fn poll_ready(&self, cx: &mut Context<'_>, dir: u8) -> Poll<()> {
        self.with(|s| {
            if s.ready & (dir | dir << CLOSED_SHIFT) != 0 {
                return Poll::Ready(());
            }
            let w = if dir == READ {
                &mut s.reader
            } else {
                &mut s.writer
            };
            match w {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *w = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(fd) = self.shared {
            let mut ev = libc::epoll_event { events: 0, u64: 0 };
            // SAFETY: plain syscall; failure (already gone) is harmless.
            unsafe {
                libc::epoll_ctl(
                    self.reactor.epfd.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    fd,
                    &mut ev,
                )
            };
        }
        let (reader, writer) = {
            let mut slots = self.reactor.slots.borrow_mut();
            let slot = &mut slots[self.idx as usize];
            slot.generation = slot.generation.wrapping_add(1);
            slot.ready = 0;
            (slot.reader.take(), slot.writer.take())
        };
        drop((reader, writer));
        self.reactor.free.borrow_mut().push(self.idx);
        self.reactor.live.set(self.reactor.live.get() - 1);
    }
}
