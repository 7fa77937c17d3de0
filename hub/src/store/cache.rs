//! Decoded job records, keyed by id and checked against the stored bytes.
//!
//! Parsing a record's JSON on every job read or update costs a tenth of the hub's CPU under
//! status polls, and again under dispatch. The cache keeps the decoded record beside the exact
//! bytes it came from; a lookup hands it out only when the caller's freshly read bytes are the
//! same, so a stale entry is never used, only missed. There is nothing to invalidate: a write
//! through any path changes the bytes.
//!
//! Two generations bound it: entries go into `young`; when `young` holds `half` entries it
//! becomes `old` and the previous `old` is dropped (outside the lock). A hit in `old` moves the
//! entry back to `young`, so what is in use stays.

use std::collections::HashMap;
use std::sync::Mutex;

use super::records::JobRecord;

type Entry = (sled::IVec, JobRecord);

/// See the module doc.
pub struct RecordCache {
    half: usize,
    inner: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    young: HashMap<String, Entry>,
    old: HashMap<String, Entry>,
}

impl RecordCache {
    /// A cache of at most `capacity` records (two generations of half each).
    pub fn new(capacity: usize) -> RecordCache {
        RecordCache {
            half: (capacity / 2).max(1),
            inner: Mutex::new(Generations::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The record decoded from exactly `raw`, if cached.
    pub fn get(&self, id: &str, raw: &[u8]) -> Option<JobRecord> {
        let mut g = self.lock();
        if let Some((bytes, job)) = g.young.get(id) {
            return (bytes.as_ref() == raw).then(|| job.clone());
        }
        let (bytes, job) = g.old.remove(id)?;
        if bytes.as_ref() != raw {
            return None;
        }
        let out = job.clone();
        let dropped = self.insert_locked(&mut g, id, bytes, job);
        drop(g);
        drop(dropped);
        Some(out)
    }

    /// Remembers that `raw` decodes to `job`.
    pub fn put(&self, id: &str, raw: sled::IVec, job: JobRecord) {
        let mut g = self.lock();
        g.old.remove(id);
        let dropped = self.insert_locked(&mut g, id, raw, job);
        drop(g);
        drop(dropped);
    }

    /// Forgets `id`.
    pub fn remove(&self, id: &str) {
        let mut g = self.lock();
        let a = g.young.remove(id);
        let b = g.old.remove(id);
        drop(g);
        drop((a, b));
    }

    /// Inserts into `young`, turning it into `old` when full; returns the generation that fell
    /// out, for the caller to drop after unlocking.
    fn insert_locked(
        &self,
        g: &mut Generations,
        id: &str,
        raw: sled::IVec,
        job: JobRecord,
    ) -> Option<HashMap<String, Entry>> {
        let mut dropped = None;
        if g.young.len() >= self.half && !g.young.contains_key(id) {
            let young = std::mem::take(&mut g.young);
            dropped = Some(std::mem::replace(&mut g.old, young));
        }
        g.young.insert(id.to_string(), (raw, job));
        dropped
    }

    /// Records held (both generations).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        let g = self.lock();
        g.young.len() + g.old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, command: &str) -> JobRecord {
        let raw = format!(
            r#"{{"id":"{id}","owner":"u","command":"{command}","timeout_secs":1,
            "max_attempts":1,"status":"queued","created_ms":1}}"#
        );
        serde_json::from_str(&raw).expect("job record")
    }

    #[test]
    fn a_hit_needs_the_same_bytes_and_the_size_stays_bounded() {
        let cache = RecordCache::new(4);
        cache.put("a", sled::IVec::from(&b"one"[..]), job("a", "first"));
        assert_eq!(
            cache.get("a", b"one").map(|j| j.command),
            Some("first".into())
        );
        assert!(cache.get("a", b"two").is_none(), "other bytes: a miss");
        assert!(cache.get("b", b"one").is_none());
        for i in 0..20 {
            let id = format!("j{i}");
            cache.put(&id, sled::IVec::from(id.as_bytes()), job(&id, "x"));
            assert!(cache.len() <= 4, "bounded: {}", cache.len());
        }
        // Entries in use survive turnover: a hit in the old generation moves back to young.
        cache.put("hot", sled::IVec::from(&b"h"[..]), job("hot", "h"));
        for i in 0..20 {
            assert!(cache.get("hot", b"h").is_some(), "hot entry kept at {i}");
            let id = format!("k{i}");
            cache.put(&id, sled::IVec::from(id.as_bytes()), job(&id, "x"));
        }
        cache.remove("hot");
        assert!(cache.get("hot", b"h").is_none());
    }
}
