//! Per-shard pools of copy buffers and splice pipes.
//!
//! A forwarded connection holds a buffer only while bytes it read are waiting to be written, and
//! a pipe only while bytes sit in it; both go back to this shard's pool as soon as they are
//! empty. An idle connection therefore holds neither, and a busy shard allocates nothing per
//! chunk once the pools are warm. The pools are thread-local: one shard is one thread, so they
//! need no lock.

use super::splice::Pipe;
use std::cell::RefCell;

/// Size of one copy buffer (also the most read from a pipe when its destination is full).
pub const BUF_SIZE: usize = 64 * 1024;
/// Most idle buffers kept per shard; beyond that, returned buffers are freed.
const MAX_IDLE_BUFS: usize = 64;
/// Most idle pipes kept per shard (two descriptors each); beyond that, they are closed.
const MAX_IDLE_PIPES: usize = 64;

#[derive(Default)]
struct Pools {
    bufs: Vec<Box<[u8]>>,
    pipes: Vec<Pipe>,
}

thread_local! {
    static POOLS: RefCell<Pools> = RefCell::new(Pools::default());
}

/// A buffer of [`BUF_SIZE`] bytes (contents unspecified).
pub fn take_buf() -> Box<[u8]> {
    POOLS
        .with(|p| p.borrow_mut().bufs.pop())
        .unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice())
}

pub fn put_buf(buf: Box<[u8]>) {
    POOLS.with(|p| {
        let mut p = p.borrow_mut();
        if p.bufs.len() < MAX_IDLE_BUFS {
            p.bufs.push(buf);
        }
    })
}

/// An empty pipe (a new one gets `size` bytes of capacity, best effort), or `None` when none
/// can be created (out of descriptors): the caller then copies instead of splicing.
pub fn take_pipe(size: usize) -> Option<Pipe> {
    if let Some(pipe) = POOLS.with(|p| p.borrow_mut().pipes.pop()) {
        return Some(pipe);
    }
    match Pipe::new(size) {
        Ok(pipe) => Some(pipe),
        Err(e) => {
            log::debug!("cannot create a splice pipe ({e}); copying instead");
            None
        }
    }
}

/// Returns a pipe; only an empty one may be reused, a non-empty one is closed.
pub fn put_pipe(pipe: Pipe) {
    if !pipe.is_empty() {
        return;
    }
    POOLS.with(|p| {
        let mut p = p.borrow_mut();
        if p.pipes.len() < MAX_IDLE_PIPES {
            p.pipes.push(pipe);
        }
    })
}

/// (idle buffers, idle pipes) held by this shard's pools.
pub fn idle() -> (usize, usize) {
    POOLS.with(|p| {
        let p = p.borrow();
        (p.bufs.len(), p.pipes.len())
    })
}
