//! Values a form's answer hands to the page it redirects to, shown once (post/redirect/get).
//!
//! A form that makes something to show (an enrollment code) stores it here under the session
//! and redirects; the page taken next by that session shows it and forgets it, so reloading
//! either page never makes another one. Entries live for a few minutes at most, and there are
//! never more than a bound of them: the oldest go first.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Values waiting for the next page of their session.
pub struct Flash<T> {
    ttl: Duration,
    max: usize,
    entries: Mutex<HashMap<String, (Instant, T)>>,
}

impl<T> Flash<T> {
    /// A store whose values are dropped after `ttl`, holding at most `max` of them.
    pub fn new(ttl: Duration, max: usize) -> Flash<T> {
        Flash {
            ttl,
            max: max.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps `value` for the next [`Flash::take`] under `key`, replacing what was there.
    pub fn put(&self, key: &str, value: T, now: Instant) {
        let mut entries = self.lock();
        entries.retain(|_, (at, _)| now.saturating_duration_since(*at) < self.ttl);
        if !entries.contains_key(key) && entries.len() >= self.max {
            let oldest = entries
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                entries.remove(&oldest);
            }
        }
        entries.insert(key.to_string(), (now, value));
    }

    /// The value kept under `key`, once; None if there is none or it is too old.
    pub fn take(&self, key: &str, now: Instant) -> Option<T> {
        let (at, value) = self.lock().remove(key)?;
        (now.saturating_duration_since(at) < self.ttl).then_some(value)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, (Instant, T)>> {
        // A map of plain values: usable as it is after a panic elsewhere.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_taken_once_within_its_time_and_the_store_stays_bounded() {
        let flash = Flash::new(Duration::from_secs(60), 3);
        let t0 = Instant::now();
        flash.put("a", 1, t0);
        assert_eq!(flash.take("b", t0), None, "another session sees nothing");
        assert_eq!(flash.take("a", t0), Some(1));
        assert_eq!(flash.take("a", t0), None, "shown once");
        flash.put("a", 2, t0);
        assert_eq!(
            flash.take("a", t0 + Duration::from_secs(60)),
            None,
            "too old"
        );
        for (i, key) in ["k1", "k2", "k3", "k4"].iter().enumerate() {
            flash.put(key, i, t0 + Duration::from_secs(i as u64));
        }
        assert_eq!(flash.lock().len(), 3);
        assert_eq!(flash.take("k1", t0), None, "the oldest went first");
        assert_eq!(flash.take("k4", t0 + Duration::from_secs(4)), Some(3));
    }
}
