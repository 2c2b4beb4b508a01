//! Tokens already fetched, by (identity, resource), reused until shortly before they expire.
//! The original NMI fetched a token on every request; IMDS rate-limits (20 req/s per VM).
//!
//! Callers choose the resource, so the cache is bounded: at most `max_entries` entries and
//! `max_bytes` of keys and tokens. When a new entry would exceed either, entries that are no
//! longer fresh go first, then the least recently used.
//!
//! The key is the resource exactly as sent upstream (the query parameter decoded, so its
//! percent-encodings share an entry). No other variant is merged: `https://vault.azure.net` and
//! `https://vault.azure.net/` are different audiences to Entra (the token's `aud` is what was
//! asked, and Key Vault refuses the second while SQL needs `https://database.windows.net/`), and
//! `…/.default` is a v2 scope that IMDS does not take. Serving one for the other would change
//! what a caller gets depending on what another asked before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use podid_azure::token::{Clock, SystemClock};

use crate::token::AccessToken;

/// Which credential a cached token belongs to: the identity's type, tenant and client ID
/// (lowercased) and, for service principals, the Secret's resourceVersion so a rotated secret
/// is used at once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub identity: String,
    pub resource: String,
}

/// Entries kept at most, by default.
pub const DEFAULT_MAX_ENTRIES: usize = 4096;
/// Bytes of keys and tokens kept at most, by default (a token is 1–4 KiB).
pub const DEFAULT_MAX_BYTES: usize = 16 << 20;
/// What an entry costs besides its strings (map slot, vectors, counters), for the byte bound.
const ENTRY_OVERHEAD: usize = 256;

struct Entry {
    tokens: Vec<AccessToken>,
    bytes: usize,
    /// When the entry was last stored or served, in uses of the cache (for LRU eviction).
    used: u64,
}

#[derive(Default)]
struct Entries {
    map: HashMap<CacheKey, Entry>,
    bytes: usize,
    uses: u64,
}

impl Entries {
    fn remove(&mut self, key: &CacheKey) {
        if let Some(e) = self.map.remove(key) {
            self.bytes -= e.bytes;
        }
    }
}

/// The cache. Entries are served while `now + refresh_margin < expires_on`.
#[derive(Clone)]
pub struct TokenCache {
    entries: Arc<Mutex<Entries>>,
    clock: Arc<dyn Clock>,
    refresh_margin: Duration,
    max_entries: usize,
    max_bytes: usize,
}

fn entry_bytes(key: &CacheKey, tokens: &[AccessToken]) -> usize {
    ENTRY_OVERHEAD
        + key.identity.len()
        + key.resource.len()
        + tokens
            .iter()
            .map(|t| {
                std::mem::size_of::<AccessToken>()
                    + t.access_token.len()
                    + t.resource.len()
                    + t.token_type.len()
            })
            .sum::<usize>()
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("refresh_margin", &self.refresh_margin)
            .field("max_entries", &self.max_entries)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    /// A cache that refreshes tokens `refresh_margin` before they expire, with the default
    /// bounds.
    pub fn new(clock: Arc<dyn Clock>, refresh_margin: Duration) -> Self {
        Self {
            entries: Arc::default(),
            clock,
            refresh_margin,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }

    /// The same cache keeping at most `max_entries` entries and `max_bytes` of keys and tokens
    /// (at least one entry each).
    pub fn with_bounds(mut self, max_entries: usize, max_bytes: usize) -> Self {
        self.max_entries = max_entries.max(1);
        self.max_bytes = max_bytes;
        self
    }

    /// A disabled cache (margin larger than any token lifetime).
    pub fn disabled() -> Self {
        Self::new(Arc::new(SystemClock), Duration::from_secs(u64::MAX / 4))
    }

    fn fresh(&self, tokens: &[AccessToken]) -> bool {
        let now = self.clock.now_unix();
        !tokens.is_empty()
            && tokens
                .iter()
                .all(|t| now.saturating_add(self.refresh_margin.as_secs()) < t.expires_on)
    }

    /// The cached tokens for `key`, if all are still fresh; stale entries are dropped.
    pub fn get(&self, key: &CacheKey) -> Option<Vec<AccessToken>> {
        let mut entries = self.entries.lock().expect("token cache lock");
        entries.uses += 1;
        let uses = entries.uses;
        match entries.map.get_mut(key) {
            Some(e) if self.fresh(&e.tokens) => {
                e.used = uses;
                Some(e.tokens.clone())
            }
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Stores tokens unless they are already too close to expiry to be reused, or larger than
    /// the whole cache; makes room by dropping stale entries, then the least recently used.
    pub fn put(&self, key: CacheKey, tokens: Vec<AccessToken>) {
        if !self.fresh(&tokens) {
            return;
        }
        let bytes = entry_bytes(&key, &tokens);
        if bytes > self.max_bytes {
            return;
        }
        let mut entries = self.entries.lock().expect("token cache lock");
        entries.remove(&key);
        let full =
            |e: &Entries| e.map.len() + 1 > self.max_entries || e.bytes + bytes > self.max_bytes;
        if full(&entries) {
            let stale: Vec<CacheKey> = entries
                .map
                .iter()
                .filter(|(_, e)| !self.fresh(&e.tokens))
                .map(|(k, _)| k.clone())
                .collect();
            for k in &stale {
                entries.remove(k);
            }
        }
        while full(&entries) {
            let Some(lru) = entries
                .map
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            entries.remove(&lru);
        }
        entries.uses += 1;
        let used = entries.uses;
        entries.bytes += bytes;
        entries.map.insert(
            key,
            Entry {
                tokens,
                bytes,
                used,
            },
        );
    }

    /// The number of entries (fresh or not).
    pub fn len(&self) -> usize {
        self.entries.lock().expect("token cache lock").map.len()
    }

    /// The bytes of keys and tokens held (what `max_bytes` bounds).
    pub fn bytes(&self) -> usize {
        self.entries.lock().expect("token cache lock").bytes
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
