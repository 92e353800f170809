//! Persistence of the registry: nothing acknowledged is lost on restart.
//!
//! The state directory holds two files:
//! - `registry.log`: every change since the last compaction, appended as framed records;
//! - `registry.snap`: a compacted image of the registry, replaced atomically (write a temporary
//!   file, fsync it, rename it over the old one, fsync the directory).
//!
//! A record is `[len: u32 LE][crc32: u32 LE][payload: len bytes of JSON]`. Recovery reads the
//! snapshot, then replays the log up to the first record that is incomplete or fails its
//! checksum (a torn write from a crash), and cuts the log there: a torn tail never hides the
//! records before it. Replaying is idempotent (each record sets one id's whole state), so a crash
//! between a compaction's rename and its log truncation loses nothing.
//!
//! Group commit: the API shard appends records to an in-memory batch and a request that changed
//! the registry waits for [`Store::commit`], which writes and `fdatasync`s whatever has
//! accumulated: a burst of registrations costs one sync, not one each. Heartbeats are appended
//! too but do not wait: losing the last heartbeats in a crash only makes a backend look older,
//! which errs on the safe side (it is not served until it heartbeats again).
//!
//! Recovery runs on the main thread before any shard starts (plain `std::fs`); everything after
//! that uses glommio's io_uring file API on the API shard, so a shard never blocks on disk.

use crate::registry::BackendSpec;
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Seek, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};

const LOG_FILE: &str = "registry.log";
const SNAP_FILE: &str = "registry.snap";
const SNAP_TMP: &str = "registry.snap.tmp";
const LOCK_FILE: &str = "lock";
/// Largest record payload accepted on reading (a backend is a few hundred bytes).
const MAX_RECORD: usize = 1 << 20;
/// Compact once the log is this long and longer than twice the last snapshot.
const COMPACT_MIN_LOG: u64 = 8 << 20;

/// A backend as stored: the registration plus the times that must survive a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBackend {
    pub id: String,
    pub app: String,
    pub region: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    pub ip: IpAddr,
    pub port: u16,
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// Absent in state files written before ALPN was a registration field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpn: Option<Vec<String>>,
    /// The backend's health-check override (absent in older files, and when it has none).
    /// Boxed: most backends have none, and a `Record` stays small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Box<crate::health::CheckSpec>>,
    pub registered_unix_ms: u64,
    pub last_heartbeat_unix_ms: u64,
    /// Draining: no new connections or DNS answers (absent = false, as in older files).
    #[serde(default, skip_serializing_if = "is_false")]
    pub draining: bool,
    /// The replication version of this state (hybrid logical clock, see
    /// `cluster::replicate`), so that a restarted hub merges it with its peers' correctly.
    /// 0 (absent): not replicated, or written before replication existed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hlc: u64,
    /// The node that wrote this version (`cluster::replicate::NodeId`); 0 with `hlc` 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub origin: u64,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl StoredBackend {
    pub fn spec(&self) -> BackendSpec {
        BackendSpec {
            id: self.id.clone(),
            app: self.app.clone(),
            region: self.region.clone(),
            country: self.country.clone(),
            ip: self.ip,
            port: self.port,
            weight: self.weight,
            soft_limit: self.soft_limit,
            hard_limit: self.hard_limit,
            ttl_secs: self.ttl_secs,
            alpn: self.alpn.clone(),
            check: self.check.as_deref().cloned(),
        }
    }
}

/// One change to the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Record {
    /// The whole state of one backend (registration or update).
    Put(StoredBackend),
    /// A backend removed.
    Del { id: String },
    /// A heartbeat at this wall-clock time.
    Beat { id: String, at: u64 },
}

/// Appends one framed record to `out`.
pub fn encode(rec: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    serde_json::to_writer(&mut *out, rec).expect("a record always serializes");
    let len = (out.len() - start - 8) as u32;
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What reading a file of records found.
#[derive(Debug, Default)]
pub struct Decoded {
    pub records: Vec<Record>,
    /// Bytes of whole, valid records from the start.
    pub valid_len: usize,
    /// Why reading stopped before the end, if it did.
    pub stopped: Option<String>,
}

/// Reads records from the start of `buf` up to the first incomplete or corrupt one.
pub fn decode(buf: &[u8]) -> Decoded {
    let mut d = Decoded::default();
    let mut pos = 0;
    while pos < buf.len() {
        let rest = &buf[pos..];
        if rest.len() < 8 {
            d.stopped = Some(format!("incomplete record header at byte {pos}"));
            break;
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len > MAX_RECORD {
            d.stopped = Some(format!("implausible record length {len} at byte {pos}"));
            break;
        }
        if rest.len() < 8 + len {
            d.stopped = Some(format!("incomplete record at byte {pos}"));
            break;
        }
        let payload = &rest[8..8 + len];
        if crc32fast::hash(payload) != crc {
            d.stopped = Some(format!("checksum mismatch at byte {pos}"));
            break;
        }
        match serde_json::from_slice::<Record>(payload) {
            Ok(rec) => d.records.push(rec),
            Err(e) => {
                d.stopped = Some(format!("unreadable record at byte {pos}: {e}"));
                break;
            }
        }
        pos += 8 + len;
        d.valid_len = pos;
    }
    d
}

/// Applies one record to a registry image.
pub fn apply(state: &mut BTreeMap<String, StoredBackend>, rec: Record) {
    match rec {
        Record::Put(b) => {
            state.insert(b.id.clone(), b);
        }
        Record::Del { id } => {
            state.remove(&id);
        }
        Record::Beat { id, at } => {
            if let Some(b) = state.get_mut(&id) {
                b.last_heartbeat_unix_ms = b.last_heartbeat_unix_ms.max(at);
            }
        }
    }
}

/// A persistence failure, worded for the operator.
#[derive(Debug)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The registry as found on disk at startup.
#[derive(Debug)]
pub struct Recovered {
    pub dir: PathBuf,
    pub backends: BTreeMap<String, StoredBackend>,
    /// Length of the valid log (where appends continue).
    pub log_len: u64,
    /// Size of the snapshot file.
    pub snap_len: u64,
    /// Bytes cut from a torn or corrupt log tail, and why.
    pub discarded: Option<(u64, String)>,
    /// Held for the life of the process: one hub per state directory.
    pub lock: std::fs::File,
}

fn err(what: &str, path: &Path, e: impl fmt::Display) -> StoreError {
    StoreError(format!("{what} {}: {e}", path.display()))
}

/// Takes the state directory's lock, reads the snapshot and the log, and cuts a torn log tail.
/// Runs on the main thread before the shards start.
pub fn recover(dir: &Path, wait: std::time::Duration) -> Result<Recovered, StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| {
        err(
            "cannot create the state directory",
            dir,
            format!("{e} (set --state-dir / EDGEPROXY_STATE_DIR to a writable directory)"),
        )
    })?;
    let lock_path = dir.join(LOCK_FILE);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .map_err(|e| err("the state directory is not writable:", &lock_path, e))?;
    // A hub handing over to us releases the lock once its registry is flushed: wait that long.
    let deadline = std::time::Instant::now() + wait;
    loop {
        match crate::sys::try_lock_exclusive(&lock) {
            Ok(()) => break,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => {
                return Err(err(
                    "the state directory is in use by another edgeproxy:",
                    dir,
                    format!(
                        "{e}; give each hub its own --state-dir, or start this one with --takeover"
                    ),
                ))
            }
        }
    }

    let mut backends = BTreeMap::new();
    let snap_path = dir.join(SNAP_FILE);
    let mut snap_len = 0;
    match std::fs::File::open(&snap_path) {
        Ok(mut f) => {
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)
                .map_err(|e| err("cannot read", &snap_path, e))?;
            snap_len = buf.len() as u64;
            let d = decode(&buf);
            if let Some(why) = d.stopped {
                // Snapshots are renamed into place whole; a bad one is not a torn write but
                // damage, and guessing would lose data silently.
                return Err(err(
                    "the registry snapshot is damaged:",
                    &snap_path,
                    format!("{why}; move it away to start from the log alone"),
                ));
            }
            for rec in d.records {
                apply(&mut backends, rec);
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("cannot read", &snap_path, e)),
    }

    let log_path = dir.join(LOG_FILE);
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&log_path)
        .map_err(|e| err("cannot open", &log_path, e))?;
    let mut buf = Vec::new();
    log.read_to_end(&mut buf)
        .map_err(|e| err("cannot read", &log_path, e))?;
    let d = decode(&buf);
    for rec in d.records {
        apply(&mut backends, rec);
    }
    let mut discarded = None;
    if let Some(why) = d.stopped {
        let cut = buf.len() - d.valid_len;
        // Keep the damaged tail for inspection, then cut it so appends continue after the last
        // good record.
        let aside = dir.join(format!("registry.log.damaged-{}", crate::clock::unix_ms()));
        let _ = std::fs::File::create(&aside).and_then(|mut f| f.write_all(&buf[d.valid_len..]));
        log.set_len(d.valid_len as u64)
            .map_err(|e| err("cannot truncate", &log_path, e))?;
        log.sync_all()
            .map_err(|e| err("cannot sync", &log_path, e))?;
        discarded = Some((cut as u64, why));
    }
    log.seek(io::SeekFrom::End(0))
        .map_err(|e| err("cannot seek", &log_path, e))?;
    Ok(Recovered {
        dir: dir.to_path_buf(),
        backends,
        log_len: d.valid_len as u64,
        snap_len,
        discarded,
        lock,
    })
}

/// A single-threaded "something changed" signal: waiters note the generation, then wait for it
/// to move.
#[derive(Default)]
struct Signal {
    generation: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

impl Signal {
    fn notify(&self) {
        self.generation.set(self.generation.get() + 1);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    async fn changed(&self) {
        let seen = self.generation.get();
        std::future::poll_fn(|cx| {
            if self.generation.get() != seen {
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// The registry's persistence on the API shard: see the module docs.
pub struct Store {
    dir: PathBuf,
    log: RefCell<Option<Rc<glommio::io::BufferedFile>>>,
    log_len: Cell<u64>,
    snap_len: Cell<u64>,
    /// Encoded records not yet written.
    pending: RefCell<Vec<u8>>,
    /// Records appended so far, and how many of them are durable.
    appended: Cell<u64>,
    durable: Cell<u64>,
    /// Whether a write + sync (or a compaction) is under way.
    busy: Cell<bool>,
    done: Signal,
    /// `fdatasync` calls made (for metrics and the group-commit figure).
    pub syncs: Cell<u64>,
    /// The state directory's lock, released once the registry is flushed on shutdown.
    lock: RefCell<Option<std::fs::File>>,
}

impl Store {
    /// Opens the log for appending. Must run on the API shard.
    pub async fn open(rec: &mut Option<Recovered>) -> io::Result<Store> {
        let r = rec.take().expect("recovered state is opened once");
        let path = r.dir.join(LOG_FILE);
        let log = glommio::io::OpenOptions::new()
            .write(true)
            .read(true)
            .buffered_open(&path)
            .await
            .map_err(io::Error::from)?;
        Ok(Store {
            dir: r.dir,
            log: RefCell::new(Some(Rc::new(log))),
            log_len: Cell::new(r.log_len),
            snap_len: Cell::new(r.snap_len),
            pending: RefCell::new(Vec::with_capacity(64 * 1024)),
            appended: Cell::new(0),
            durable: Cell::new(0),
            busy: Cell::new(false),
            done: Signal::default(),
            syncs: Cell::new(0),
            lock: RefCell::new(Some(r.lock)),
        })
    }

    /// Releases the state directory (after the final flush): a successor may now restore the
    /// registry from it. Later commits fail, so nothing is acknowledged that it would not see.
    pub fn release(&self) {
        self.lock.borrow_mut().take();
    }

    /// Adds a record to the next batch.
    pub fn append(&self, rec: &Record) {
        encode(rec, &mut self.pending.borrow_mut());
        self.appended.set(self.appended.get() + 1);
    }

    /// Whether records are waiting to be written.
    pub fn has_pending(&self) -> bool {
        self.durable.get() < self.appended.get()
    }

    /// Makes every record appended so far durable: writes the batch and syncs it, or waits for
    /// the write under way and then, if needed, writes the rest. One sync covers every record
    /// appended before it started.
    pub async fn commit(&self) -> io::Result<()> {
        if self.lock.borrow().is_none() && self.has_pending() {
            return Err(io::Error::other(
                "the state directory was released for a successor",
            ));
        }
        let target = self.appended.get();
        loop {
            if self.durable.get() >= target {
                return Ok(());
            }
            if self.busy.get() {
                self.done.changed().await;
                continue;
            }
            self.busy.set(true);
            let result = self.write_batch().await;
            self.busy.set(false);
            self.done.notify();
            result?;
        }
    }

    async fn write_batch(&self) -> io::Result<()> {
        let upto = self.appended.get();
        let batch = std::mem::take(&mut *self.pending.borrow_mut());
        let log = self.log.borrow().clone().expect("log is open");
        let at = self.log_len.get();
        let mut written = 0;
        let result: io::Result<()> = async {
            while written < batch.len() {
                let n = log
                    .write_at(batch[written..].to_vec(), at + written as u64)
                    .await
                    .map_err(io::Error::from)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "log write wrote nothing",
                    ));
                }
                written += n;
            }
            log.fdatasync().await.map_err(io::Error::from)?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                self.syncs.set(self.syncs.get() + 1);
                self.log_len.set(at + batch.len() as u64);
                self.durable.set(upto);
                Ok(())
            }
            Err(e) => {
                // Put the batch back in front of what arrived meanwhile and cut whatever part
                // of it reached the file, so the next attempt writes it whole at the same place.
                {
                    let mut pending = self.pending.borrow_mut();
                    let later = std::mem::take(&mut *pending);
                    *pending = batch;
                    pending.extend_from_slice(&later);
                }
                let _ = log.truncate(at).await;
                Err(e)
            }
        }
    }

    /// Whether the log has grown enough to be worth compacting.
    pub fn wants_compaction(&self) -> bool {
        let log = self.log_len.get();
        log >= COMPACT_MIN_LOG && log > 2 * self.snap_len.get()
    }

    /// Replaces the snapshot with `image` (the whole registry now) and empties the log.
    /// Records appended after `image` was taken stay pending and go to the new log.
    pub async fn compact(&self, image: Vec<StoredBackend>) -> io::Result<()> {
        while self.busy.get() {
            self.done.changed().await;
        }
        self.busy.set(true);
        let result = self.compact_inner(image).await;
        self.busy.set(false);
        self.done.notify();
        result
    }

    async fn compact_inner(&self, image: Vec<StoredBackend>) -> io::Result<()> {
        // Whatever is pending predates or equals the image; flushing it first keeps the rule
        // "the log holds everything since the snapshot" true at every instant.
        if self.has_pending() {
            self.write_batch().await?;
        }
        let mut buf = Vec::with_capacity(image.len() * 200);
        for b in image {
            encode(&Record::Put(b), &mut buf);
        }
        let tmp_path = self.dir.join(SNAP_TMP);
        let mut tmp = glommio::io::BufferedFile::create(&tmp_path)
            .await
            .map_err(io::Error::from)?;
        let len = buf.len();
        let mut written = 0;
        while written < len {
            let n = tmp
                .write_at(buf[written..].to_vec(), written as u64)
                .await
                .map_err(io::Error::from)?;
            written += n;
        }
        tmp.fdatasync().await.map_err(io::Error::from)?;
        tmp.rename(self.dir.join(SNAP_FILE))
            .await
            .map_err(io::Error::from)?;
        tmp.close().await.map_err(io::Error::from)?;
        let dir = glommio::io::Directory::open(&self.dir)
            .await
            .map_err(io::Error::from)?;
        dir.sync().await.map_err(io::Error::from)?;
        let _ = dir.close().await;
        // The snapshot is durable: the log can start over. A crash before this truncation
        // replays the old log over the new snapshot, which changes nothing (idempotent).
        let log = self.log.borrow().clone().expect("log is open");
        log.truncate(0).await.map_err(io::Error::from)?;
        log.fdatasync().await.map_err(io::Error::from)?;
        self.log_len.set(0);
        self.snap_len.set(len as u64);
        self.syncs.set(self.syncs.get() + 3);
        log::info!("registry compacted: snapshot {len} bytes, log emptied");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(id: &str, at: u64) -> StoredBackend {
        StoredBackend {
            id: id.into(),
            app: "gru.pop".into(),
            region: "sa".into(),
            country: None,
            ip: "10.50.1.1".parse().unwrap(),
            port: 80,
            weight: 1,
            soft_limit: None,
            hard_limit: Some(10),
            ttl_secs: None,
            alpn: None,
            check: None,
            registered_unix_ms: at,
            last_heartbeat_unix_ms: at,
            draining: false,
            hlc: 0,
            origin: 0,
        }
    }

    #[test]
    fn alpn_is_optional_in_stored_records() {
        // A record written before `alpn` existed still loads, and `None` is not written.
        let old = r#"{"op":"put","id":"a","app":"gru.pop","region":"sa","ip":"10.50.1.1","port":80,"weight":1,"registered_unix_ms":1,"last_heartbeat_unix_ms":1}"#;
        let Record::Put(b) = serde_json::from_str::<Record>(old).unwrap() else {
            panic!("a put");
        };
        assert_eq!(b.alpn, None);
        assert_eq!(b.check, None);
        let again = serde_json::to_string(&Record::Put(b.clone())).unwrap();
        assert!(!again.contains("alpn"), "{again}");
        assert!(!again.contains("check"), "{again}");
        let with = StoredBackend {
            alpn: Some(vec!["h2".into(), "http/1.1".into()]),
            check: Some(Box::new(crate::health::CheckSpec {
                kind: Some(crate::health::CheckKind::Http),
                path: Some("/healthz".into()),
                fall: Some(2),
                ..Default::default()
            })),
            ..b
        };
        let json = serde_json::to_string(&Record::Put(with.clone())).unwrap();
        assert_eq!(
            serde_json::from_str::<Record>(&json).unwrap(),
            Record::Put(with)
        );
    }

    fn log_of(recs: &[Record]) -> Vec<u8> {
        let mut buf = Vec::new();
        for r in recs {
            encode(r, &mut buf);
        }
        buf
    }

    #[test]
    fn round_trip_and_apply() {
        let recs = vec![
            Record::Put(backend("a", 1)),
            Record::Put(backend("b", 2)),
            Record::Beat {
                id: "a".into(),
                at: 50,
            },
            Record::Del { id: "b".into() },
            Record::Beat {
                id: "ghost".into(),
                at: 9,
            },
        ];
        let buf = log_of(&recs);
        let d = decode(&buf);
        assert_eq!(d.records, recs);
        assert_eq!(d.valid_len, buf.len());
        assert!(d.stopped.is_none());
        let mut state = BTreeMap::new();
        for r in d.records {
            apply(&mut state, r);
        }
        assert_eq!(state.len(), 1);
        assert_eq!(state["a"].last_heartbeat_unix_ms, 50);
    }

    #[test]
    fn a_torn_tail_at_any_byte_keeps_every_earlier_record() {
        let recs: Vec<Record> = (0..5)
            .map(|i| Record::Put(backend(&format!("b{i}"), i)))
            .collect();
        let buf = log_of(&recs);
        let mut boundaries = vec![0];
        let mut one = Vec::new();
        for r in &recs {
            encode(r, &mut one);
            boundaries.push(one.len());
        }
        for cut in 0..buf.len() {
            let d = decode(&buf[..cut]);
            let whole = boundaries.iter().filter(|&&b| b <= cut).count() - 1;
            assert_eq!(d.records.len(), whole, "cut at {cut}");
            assert_eq!(d.valid_len, boundaries[whole]);
            assert_eq!(d.stopped.is_some(), cut != boundaries[whole]);
        }
    }

    #[test]
    fn a_flipped_bit_stops_reading_there() {
        let recs: Vec<Record> = (0..3)
            .map(|i| Record::Put(backend(&format!("b{i}"), i)))
            .collect();
        let mut buf = log_of(&recs);
        let second = {
            let mut one = Vec::new();
            encode(&recs[0], &mut one);
            one.len()
        };
        buf[second + 20] ^= 0x40;
        let d = decode(&buf);
        assert_eq!(d.records.len(), 1);
        assert_eq!(d.valid_len, second);
        assert!(d.stopped.unwrap().contains("checksum"));
    }

    #[test]
    fn recover_cuts_a_torn_tail_and_locks_the_directory() {
        let dir = std::env::temp_dir().join(format!("edgeproxy-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut buf = log_of(&[Record::Put(backend("a", 1)), Record::Put(backend("b", 2))]);
        let good = buf.len();
        buf.extend_from_slice(&[7, 0, 0, 0, 1, 2]);
        std::fs::File::create(dir.join(LOG_FILE))
            .unwrap()
            .write_all(&buf)
            .unwrap();
        let r = recover(&dir, std::time::Duration::ZERO).unwrap();
        assert_eq!(r.backends.len(), 2);
        assert_eq!(r.log_len, good as u64);
        assert_eq!(r.discarded.as_ref().unwrap().0, 6);
        assert_eq!(
            std::fs::metadata(dir.join(LOG_FILE)).unwrap().len(),
            good as u64
        );
        // A second hub on the same directory is refused while the first holds it.
        let e = recover(&dir, std::time::Duration::ZERO).unwrap_err();
        assert!(e.0.contains("in use by another edgeproxy"), "{e}");
        drop(r);
        let again = recover(&dir, std::time::Duration::ZERO).unwrap();
        assert!(again.discarded.is_none());
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
