//! Tokens already fetched, by (identity, resource), reused until shortly before they expire.
//! The original NMI fetched a token on every request; IMDS rate-limits (20 req/s per VM).

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

/// The cache. Entries are served while `now + refresh_margin < expires_on`.
#[derive(Clone)]
pub struct TokenCache {
    entries: Arc<Mutex<HashMap<CacheKey, Vec<AccessToken>>>>,
    clock: Arc<dyn Clock>,
    refresh_margin: Duration,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("refresh_margin", &self.refresh_margin)
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    /// A cache that refreshes tokens `refresh_margin` before they expire.
    pub fn new(clock: Arc<dyn Clock>, refresh_margin: Duration) -> Self {
        Self {
            entries: Arc::default(),
            clock,
            refresh_margin,
        }
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
        match entries.get(key) {
            Some(t) if self.fresh(t) => Some(t.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Stores tokens unless they are already too close to expiry to be reused.
    pub fn put(&self, key: CacheKey, tokens: Vec<AccessToken>) {
        if self.fresh(&tokens) {
            self.entries
                .lock()
                .expect("token cache lock")
                .insert(key, tokens);
        }
    }

    /// The number of entries (fresh or not).
    pub fn len(&self) -> usize {
        self.entries.lock().expect("token cache lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
