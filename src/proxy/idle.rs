//! The idle timeout shared by every forwarding loop (plain TCP and TLS): a connection ends when
//! no byte has moved either way for the timeout.
//!
//! One glommio timer per connection, re-armed only when it is due, not on every chunk: between
//! wake-ups the loop only compares clock readings, because polling the timer re-registers it,
//! which costs more than the check.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

pub struct IdleTimer {
    idle_ms: u64,
    last_active_ms: u64,
    /// When `timer` fires, in [`crate::clock::now_ms`] time: before that, a wake-up cannot be the
    /// timer and the timer need not be polled.
    due_ms: u64,
    timer: glommio::timer::Timer,
    armed: bool,
}

impl IdleTimer {
    pub fn new(idle: Duration) -> IdleTimer {
        let idle_ms = idle.as_millis().max(1) as u64;
        let now = crate::clock::now_ms();
        IdleTimer {
            idle_ms,
            last_active_ms: now,
            due_ms: now + idle_ms,
            timer: glommio::timer::Timer::new(Duration::from_millis(idle_ms)),
            armed: false,
        }
    }

    /// Called from the loop's `poll` when it is about to return `Pending`: `moved` says whether
    /// any byte moved during this poll. An error when the connection has been idle too long;
    /// otherwise the timer is (re)armed on `cx` when due.
    pub fn check(&mut self, cx: &mut Context<'_>, moved: bool) -> io::Result<()> {
        let now = crate::clock::now_ms();
        if moved {
            self.last_active_ms = now;
        }
        if !self.armed || now >= self.due_ms {
            let silent = now.saturating_sub(self.last_active_ms);
            if silent >= self.idle_ms {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "idle timeout: no byte moved either way",
                ));
            }
            let wait = self.idle_ms - silent;
            // Integer ms: the timer fires at or after `now + wait` in clock ms, never before.
            self.due_ms = now + wait;
            self.timer.reset(Duration::from_millis(wait));
            // Registers the timer with this task's waker; it cannot be due yet.
            let _ = Pin::new(&mut self.timer).poll(cx);
            self.armed = true;
        }
        Ok(())
    }
}
