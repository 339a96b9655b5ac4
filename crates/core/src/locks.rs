//! Per-volume serialisation: one lock per name, made on demand and dropped
//! when nobody holds or waits for it, so 10,000 idle volumes cost nothing.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RawMutex};

type NameLock = Arc<Mutex<()>>;

#[derive(Default)]
pub struct NameLocks {
    map: Mutex<HashMap<String, NameLock>>,
}

/// Held while an operation runs on one name.
pub struct NameGuard<'a> {
    locks: &'a NameLocks,
    name: String,
    guard: Option<parking_lot::ArcMutexGuard<RawMutex, ()>>,
}

impl NameLocks {
    fn entry(&self, name: &str) -> NameLock {
        self.map.lock().entry(name.to_string()).or_default().clone()
    }

    /// Wait for the name's lock.
    pub fn lock(&self, name: &str) -> NameGuard<'_> {
        let guard = self.entry(name).lock_arc();
        NameGuard {
            locks: self,
            name: name.to_string(),
            guard: Some(guard),
        }
    }

    /// Wait at most `limit` for the name's lock.
    pub fn lock_for(&self, name: &str, limit: std::time::Duration) -> Option<NameGuard<'_>> {
        self.take(name, |lock| lock.try_lock_arc_for(limit))
    }

    /// Take the name's lock only if it is free now (CSI answers ABORTED
    /// instead of waiting).
    pub fn try_lock(&self, name: &str) -> Option<NameGuard<'_>> {
        self.take(name, |lock| lock.try_lock_arc())
    }

    fn take(
        &self,
        name: &str,
        attempt: impl FnOnce(&NameLock) -> Option<parking_lot::ArcMutexGuard<RawMutex, ()>>,
    ) -> Option<NameGuard<'_>> {
        let lock = self.entry(name);
        let guard = attempt(&lock);
        drop(lock);
        match guard {
            Some(guard) => Some(NameGuard {
                locks: self,
                name: name.to_string(),
                guard: Some(guard),
            }),
            None => {
                self.forget_if_idle(name);
                None
            }
        }
    }

    /// The names whose lock is held right now.
    pub fn held(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .map
            .lock()
            .iter()
            .filter(|(_, lock)| lock.is_locked())
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    fn forget_if_idle(&self, name: &str) {
        let mut map = self.map.lock();
        if let Some(lock) = map.get(name) {
            // Only the map holds it: no holder, no waiter.
            if Arc::strong_count(lock) == 1 {
                map.remove(name);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().len()
    }
}

impl Drop for NameGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        self.locks.forget_if_idle(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounded_wait_gives_up_and_held_names_are_listed() {
        let locks = NameLocks::default();
        let held = locks.lock("a");
        assert_eq!(locks.held(), vec!["a".to_string()]);
        assert!(locks
            .lock_for("a", std::time::Duration::from_millis(20))
            .is_none());
        assert!(locks
            .lock_for("b", std::time::Duration::from_millis(20))
            .is_some());
        drop(held);
        assert!(locks.held().is_empty());
        assert!(locks
            .lock_for("a", std::time::Duration::from_millis(20))
            .is_some());
        assert_eq!(locks.len(), 0);
    }

    #[test]
    fn serialises_one_name_and_forgets_idle_locks() {
        let locks = Arc::new(NameLocks::default());
        let counter = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let max = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (locks, counter, max) = (locks.clone(), counter.clone(), max.clone());
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        let _g = locks.lock("v");
                        let now = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        max.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                        counter.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(max.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(locks.len(), 0);
    }

    #[test]
    fn try_lock_fails_while_held() {
        let locks = NameLocks::default();
        let g = locks.lock("a");
        assert!(locks.try_lock("a").is_none());
        assert!(locks.try_lock("b").is_some());
        drop(g);
        assert!(locks.try_lock("a").is_some());
        assert_eq!(locks.len(), 0);
    }
}
