//! Webhook triggers as deliveries read them, reused for a second: a burst of deliveries costs
//! the database one lookup per trigger and second instead of one per request. A change made on
//! this replica is seen at once; one made on another replica within a second, like a revoked
//! token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::WorkspaceId;
use crate::store::triggers::TriggerRow;

const TTL: Duration = Duration::from_secs(1);
const MAX_ENTRIES: usize = 10_000;

/// A trigger and whether its owner is a superadmin; `None`: there is no trigger at the path.
pub type Cached = Option<(TriggerRow, bool)>;

#[derive(Default)]
pub struct TriggerCache {
    entries: Mutex<HashMap<(String, String), (Cached, Instant)>>,
}

impl TriggerCache {
    pub fn get(&self, ws: &WorkspaceId, path: &str) -> Option<Cached> {
        let entries = self.entries.lock().expect("trigger cache lock");
        entries
            .get(&(ws.to_string(), path.to_owned()))
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(cached, _)| cached.clone())
    }

    pub fn put(&self, ws: &WorkspaceId, path: &str, cached: Cached) {
        let mut entries = self.entries.lock().expect("trigger cache lock");
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (_, at)| at.elapsed() < TTL);
        }
        entries.insert((ws.to_string(), path.to_owned()), (cached, Instant::now()));
    }

    pub fn forget(&self, ws: &WorkspaceId, path: &str) {
        let mut entries = self.entries.lock().expect("trigger cache lock");
        entries.remove(&(ws.to_string(), path.to_owned()));
    }
}
