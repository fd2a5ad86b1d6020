//! A least-recently-used cache with optional per-entry TTL and size accounting in entries and bytes, plus
//! hit / miss / eviction counters. [`SharedLru`] is the thread-safe form.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use crate::error::{invalid, Result};

const NIL: usize = usize::MAX;

struct Slot<V> {
    key: String,
    value: Option<V>,
    bytes: usize,
    expires: Option<Instant>,
    prev: usize,
    next: usize,
}

/// Counters since creation (or the last [`LruCache::reset_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LruStats {
    /// Lookups that found a live entry.
    pub hits: u64,
    /// Lookups that found nothing (or an expired entry).
    pub misses: u64,
    /// Entries removed to respect the entry or byte limit.
    pub evictions: u64,
    /// Entries dropped because their TTL had passed.
    pub expirations: u64,
    /// Inserts refused because the entry alone exceeds the byte limit.
    pub rejected: u64,
}

/// The single-threaded cache.
pub struct LruCache<V> {
    map: FxHashMap<String, usize>,
    slots: Vec<Slot<V>>,
    free: Vec<usize>,
    head: usize,
    tail: usize,
    bytes: usize,
    max_entries: usize,
    max_bytes: Option<usize>,
    default_ttl: Option<Duration>,
    stats: LruStats,
}

impl<V> LruCache<V> {
    /// A cache holding at most `max_entries` entries and (if given) `max_bytes` bytes; `default_ttl` applies to
    /// inserts that give none.
    pub fn new(max_entries: usize, max_bytes: Option<usize>, default_ttl: Option<Duration>) -> Result<Self> {
        if max_entries == 0 {
            return Err(invalid("max_entries must be at least 1"));
        }
        if max_bytes == Some(0) {
            return Err(invalid("max_bytes must be at least 1 (or None for no byte limit)"));
        }
        Ok(LruCache {
            map: FxHashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            bytes: 0,
            max_entries,
            max_bytes,
            default_ttl,
            stats: LruStats::default(),
        })
    }

    /// Live entries (expired ones not yet looked at are counted until they are).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes accounted to the entries held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The counters.
    pub fn stats(&self) -> LruStats {
        self.stats
    }

    /// Zero the counters.
    pub fn reset_stats(&mut self) {
        self.stats = LruStats::default();
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next) = (self.slots[i].prev, self.slots[i].next);
        if prev == NIL { self.head = next } else { self.slots[prev].next = next }
        if next == NIL { self.tail = prev } else { self.slots[next].prev = prev }
    }

    fn push_front(&mut self, i: usize) {
        self.slots[i].prev = NIL;
        self.slots[i].next = self.head;
        if self.head != NIL {
            self.slots[self.head].prev = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }

    fn take(&mut self, i: usize) -> Option<V> {
        self.unlink(i);
        let key = std::mem::take(&mut self.slots[i].key);
        self.map.remove(&key);
        self.bytes -= self.slots[i].bytes;
        self.free.push(i);
        self.slots[i].value.take()
    }

    /// Look `key` up, marking it most recently used; `f` maps the stored value (e.g. to clone it).
    pub fn get_with<R>(&mut self, key: &str, f: impl FnOnce(&V) -> R) -> (Option<R>, Option<V>) {
        let Some(&i) = self.map.get(key) else {
            self.stats.misses += 1;
            return (None, None);
        };
        if self.slots[i].expires.is_some_and(|at| Instant::now() >= at) {
            self.stats.misses += 1;
            self.stats.expirations += 1;
            return (None, self.take(i));
        }
        self.stats.hits += 1;
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
        (self.slots[i].value.as_ref().map(f), None)
    }

    /// Insert or replace `key`. Returns the values pushed out (replaced, evicted or refused), so the caller
    /// decides where they are dropped. An entry larger than `max_bytes` is refused and returned. A `ttl` (or
    /// default TTL) too long for the clock to represent, such as `Duration::MAX`, means the entry never expires.
    pub fn insert(&mut self, key: String, value: V, bytes: usize, ttl: Option<Duration>) -> Vec<V> {
        let mut out = Vec::new();
        if self.max_bytes.is_some_and(|max| bytes > max) {
            self.stats.rejected += 1;
            out.push(value);
            return out;
        }
        if let Some(&i) = self.map.get(&key) {
            out.extend(self.take(i));
        }
        // a TTL past the end of the clock's range (e.g. `Duration::MAX`) never expires
        let expires = ttl.or(self.default_ttl).and_then(|ttl| Instant::now().checked_add(ttl));
        let slot = Slot { key: key.clone(), value: Some(value), bytes, expires, prev: NIL, next: NIL };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        self.map.insert(key, i);
        self.bytes += bytes;
        self.push_front(i);
        while self.map.len() > self.max_entries || self.max_bytes.is_some_and(|max| self.bytes > max) {
            let victim = self.tail;
            if victim == i {
                break;
            }
            self.stats.evictions += 1;
            out.extend(self.take(victim));
        }
        out
    }

    /// Remove `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let i = *self.map.get(key)?;
        self.take(i)
    }

    /// Whether `key` is held and not expired (does not change recency or counters).
    pub fn contains(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|&i| !self.slots[i].expires.is_some_and(|at| Instant::now() >= at))
    }

    /// Remove everything, returning the values.
    pub fn clear(&mut self) -> Vec<V> {
        let out = self.slots.iter_mut().filter_map(|s| s.value.take()).collect();
        self.map.clear();
        self.slots.clear();
        self.free.clear();
        self.head = NIL;
        self.tail = NIL;
        self.bytes = 0;
        out
    }

    /// Entry limit.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Byte limit, if any.
    pub fn max_bytes(&self) -> Option<usize> {
        self.max_bytes
    }

    /// TTL applied to inserts that give none.
    pub fn default_ttl(&self) -> Option<Duration> {
        self.default_ttl
    }

    /// Visit live entries from least to most recently used: `(key, value, bytes, remaining TTL)`, so that
    /// inserting them in this order into a new cache rebuilds the same recency order.
    pub fn for_each_oldest_first(&self, mut f: impl FnMut(&str, &V, usize, Option<Duration>)) {
        let now = Instant::now();
        let mut i = self.tail;
        while i != NIL {
            let slot = &self.slots[i];
            let remaining = slot.expires.map(|at| at.saturating_duration_since(now));
            if remaining != Some(Duration::ZERO) {
                if let Some(value) = &slot.value {
                    f(&slot.key, value, slot.bytes, remaining);
                }
            }
            i = slot.prev;
        }
    }

    /// Keys from most to least recently used.
    pub fn keys(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.map.len());
        let mut i = self.head;
        while i != NIL {
            out.push(self.slots[i].key.clone());
            i = self.slots[i].next;
        }
        out
    }
}

/// [`LruCache`] behind a mutex, for many threads.
pub struct SharedLru<V> {
    inner: Mutex<LruCache<V>>,
}

impl<V> SharedLru<V> {
    /// See [`LruCache::new`].
    pub fn new(max_entries: usize, max_bytes: Option<usize>, default_ttl: Option<Duration>) -> Result<Self> {
        Ok(SharedLru { inner: Mutex::new(LruCache::new(max_entries, max_bytes, default_ttl)?) })
    }

    /// Run `f` with the cache locked.
    pub fn with<R>(&self, f: impl FnOnce(&mut LruCache<V>) -> R) -> R {
        f(&mut self.inner.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let mut c = LruCache::new(2, None, None).unwrap();
        c.insert("a".into(), 1, 0, None);
        c.insert("b".into(), 2, 0, None);
        assert_eq!(c.get_with("a", |v| *v).0, Some(1));
        let out = c.insert("c".into(), 3, 0, None);
        assert_eq!(out, vec![2]);
        assert_eq!(c.keys(), vec!["c", "a"]);
        assert_eq!(c.stats().evictions, 1);
    }

    #[test]
    fn byte_limit_and_rejection() {
        let mut c = LruCache::new(100, Some(10), None).unwrap();
        c.insert("a".into(), 'a', 4, None);
        c.insert("b".into(), 'b', 4, None);
        c.insert("c".into(), 'c', 4, None);
        assert_eq!(c.keys(), vec!["c", "b"]);
        assert_eq!(c.bytes(), 8);
        assert_eq!(c.insert("huge".into(), 'h', 11, None), vec!['h']);
        assert_eq!(c.stats().rejected, 1);
    }

    #[test]
    fn ttl_expires() {
        let mut c = LruCache::new(10, None, None).unwrap();
        c.insert("a".into(), 1, 0, Some(Duration::from_millis(20)));
        assert!(c.contains("a"));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(c.get_with("a", |v| *v), (None, Some(1)));
        assert_eq!(c.stats().expirations, 1);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn huge_ttls_never_expire() {
        let mut c = LruCache::new(10, None, Some(Duration::MAX)).unwrap();
        c.insert("a".into(), 1, 0, None);
        c.insert("b".into(), 2, 0, Some(Duration::from_secs(u64::MAX / 2)));
        assert!(c.contains("a") && c.contains("b"));
        let mut remaining = Vec::new();
        c.for_each_oldest_first(|key, _, _, ttl| remaining.push((key.to_string(), ttl)));
        assert!(remaining.iter().all(|(_, ttl)| ttl.is_none() || ttl.is_some_and(|t| t > Duration::from_secs(1 << 40))));
    }

    #[test]
    fn replace_keeps_accounting() {
        let mut c = LruCache::new(10, Some(100), None).unwrap();
        c.insert("a".into(), 1, 30, None);
        assert_eq!(c.insert("a".into(), 2, 10, None), vec![1]);
        assert_eq!(c.bytes(), 10);
        assert_eq!(c.len(), 1);
        assert_eq!(c.remove("a"), Some(2));
        assert_eq!(c.bytes(), 0);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            Get(u8),
            Put(u8, usize),
            Remove(u8),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0u8..16).prop_map(Op::Get),
                (0u8..16, prop_oneof![3 => 0usize..40, 1 => 0usize..200]).prop_map(|(k, b)| Op::Put(k, b)),
                (0u8..16).prop_map(Op::Remove),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            /// Entry and byte limits always hold, byte accounting matches the entries held, the key list and
            /// the length agree, every value comes back out exactly once, and a value just put (when it fits)
            /// is what `get` returns.
            #[test]
            fn limits_hold_and_puts_are_readable(
                max_entries in 1usize..8,
                max_bytes in proptest::option::of(1usize..100),
                ops in proptest::collection::vec(op(), 0..120),
            ) {
                let mut cache: LruCache<(u8, u32)> = LruCache::new(max_entries, max_bytes, None).unwrap();
                let mut sizes: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
                let mut returned = 0u64;
                let mut inserted = 0u64;
                for (n, op) in ops.into_iter().enumerate() {
                    let n = n as u32;
                    match op {
                        Op::Get(k) => {
                            let (value, expired) = cache.get_with(&k.to_string(), |v| *v);
                            prop_assert!(expired.is_none());
                            if let Some((key, _)) = value {
                                prop_assert_eq!(key, k);
                            }
                        }
                        Op::Put(k, bytes) => {
                            inserted += 1;
                            let out = cache.insert(k.to_string(), (k, n), bytes, None);
                            returned += out.len() as u64;
                            let fits = max_bytes.map_or(true, |max| bytes <= max);
                            if fits {
                                sizes.insert(k.to_string(), bytes);
                                prop_assert_eq!(cache.get_with(&k.to_string(), |v| *v).0, Some((k, n)));
                                prop_assert_eq!(cache.keys().first().cloned(), Some(k.to_string()));
                            } else {
                                prop_assert_eq!(out.last().copied(), Some((k, n)));
                            }
                        }
                        Op::Remove(k) => {
                            returned += cache.remove(&k.to_string()).is_some() as u64;
                        }
                    }
                    prop_assert!(cache.len() <= max_entries);
                    if let Some(max) = max_bytes {
                        prop_assert!(cache.bytes() <= max, "{} > {max}", cache.bytes());
                    }
                    let keys = cache.keys();
                    prop_assert_eq!(keys.len(), cache.len());
                    let accounted: usize = keys.iter().map(|k| sizes[k]).sum();
                    prop_assert_eq!(accounted, cache.bytes());
                    prop_assert_eq!(inserted, returned + cache.len() as u64);
                }
            }
        }
    }
}
