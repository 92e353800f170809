//! Hybrid logical clock: versions that follow wall-clock time when clocks agree and still
//! order causally when they do not.
//!
//! A version is `physical ms << 16 | logical counter` in one `u64`, so versions compare as
//! integers. A node's clock never goes backwards, and a local write is always newer than
//! anything the node has seen for that id (see [`Clock::write_version`]), whatever the wall
//! clocks say.

/// A hybrid logical clock reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hlc(pub u64);

impl Hlc {
    const LOGICAL_BITS: u32 = 16;

    pub fn new(ms: u64, logical: u16) -> Hlc {
        Hlc((ms << Self::LOGICAL_BITS) | u64::from(logical))
    }

    /// The physical part, Unix ms.
    pub fn ms(self) -> u64 {
        self.0 >> Self::LOGICAL_BITS
    }

    pub fn logical(self) -> u16 {
        self.0 as u16
    }

    /// The next reading after this one (a logical overflow carries into the ms, harmlessly).
    pub fn succ(self) -> Hlc {
        Hlc(self.0.saturating_add(1))
    }
}

impl std::fmt::Display for Hlc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.ms(), self.logical())
    }
}

/// One node's clock.
#[derive(Debug, Clone)]
pub struct Clock {
    last: Hlc,
    /// How far ahead of our own wall clock a remote reading may pull ours.
    max_ahead_ms: u64,
}

impl Clock {
    pub fn new(max_ahead_ms: u64) -> Clock {
        Clock {
            last: Hlc::default(),
            max_ahead_ms,
        }
    }

    /// A new reading for a local event at wall time `phys_ms`.
    pub fn tick(&mut self, phys_ms: u64) -> Hlc {
        let p = Hlc::new(phys_ms, 0);
        self.last = if p > self.last { p } else { self.last.succ() };
        self.last
    }

    /// The version of a local write over an entry whose version is `seen`: newer than both
    /// the clock and `seen`, so the writer's change wins over the state it replaced even when
    /// `seen` came from a clock running ahead of ours.
    pub fn write_version(&mut self, phys_ms: u64, seen: Option<Hlc>) -> Hlc {
        let t = self.tick(phys_ms);
        match seen {
            Some(s) if s >= t => {
                self.last = s.succ();
                self.last
            }
            _ => t,
        }
    }

    /// Takes a remote reading into account. Returns `false` (and leaves the clock alone) when
    /// it is more than the tolerance ahead of our wall clock: a runaway clock elsewhere must
    /// not drag every node's versions into the future. The record is still merged.
    pub fn observe(&mut self, remote: Hlc, phys_ms: u64) -> bool {
        if remote.ms() > phys_ms.saturating_add(self.max_ahead_ms) {
            return false;
        }
        if remote > self.last {
            self.last = remote;
        }
        true
    }

    /// Makes sure later readings are newer than `v` (restored state).
    pub fn witness(&mut self, v: Hlc) {
        if v > self.last {
            self.last = v;
        }
    }

    pub fn last(&self) -> Hlc {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_causal() {
        let mut c = Clock::new(1_000);
        let a = c.tick(100);
        let b = c.tick(100);
        let d = c.tick(50); // wall clock stepped back
        assert!(a < b && b < d);
        assert_eq!(a, Hlc::new(100, 0));
        assert_eq!(d.ms(), 100);
        // A reading slightly ahead is adopted; one far ahead is not.
        assert!(c.observe(Hlc::new(900, 3), 100));
        assert_eq!(c.tick(100), Hlc::new(900, 4));
        assert!(!c.observe(Hlc::new(10_000, 0), 100));
        assert_eq!(c.last(), Hlc::new(900, 4));
        // A write over a far-future version still wins over it.
        let seen = Hlc::new(10_000, 0);
        assert!(c.write_version(100, Some(seen)) > seen);
    }
}
