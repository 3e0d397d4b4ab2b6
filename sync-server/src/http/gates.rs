//! What bounds the work one caller can start on a replica: the long polls an agent holds open
//! at once ([`LongPolls`]), and how often a read-only admin token may start a reconcile (a full
//! walk of every journal: [`ReconcileGate`]).
//!
//! Guarantees: a long poll's slot is returned when its request ends, however it ends (the slot is
//! dropped with the handler's future, a client going away included); the per-agent table holds
//! only agents with an open long poll, so it is bounded by the connection limit. Both are per
//! replica: with R replicas an agent may hold R × the limit (each still bounded).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Long polls open per agent on this replica.
#[derive(Debug, Default)]
pub struct LongPolls {
    open: Mutex<HashMap<Uuid, usize>>,
}

/// A long poll's place, held while it waits; returned on drop.
#[derive(Debug)]
pub struct LongPollSlot {
    polls: Arc<LongPolls>,
    agent: Uuid,
}

impl LongPolls {
    /// A slot for `agent`, unless it already holds `max`.
    pub fn enter(self: &Arc<Self>, agent: Uuid, max: usize) -> Option<LongPollSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(agent).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(LongPollSlot {
            polls: self.clone(),
            agent,
        })
    }

    /// How many long polls `agent` holds open here.
    pub fn open(&self, agent: Uuid) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&agent).copied().unwrap_or(0)
    }
}

impl Drop for LongPollSlot {
    fn drop(&mut self) {
        let mut open = self.polls.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.agent) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.agent);
            }
        }
    }
}

/// When a read-only token last started a reconcile on this replica.
#[derive(Debug, Default)]
pub struct ReconcileGate {
    last_read_only: Mutex<Option<Instant>>,
}

impl ReconcileGate {
    /// Lets a read-only token start a reconcile if the last one started at least `interval`
    /// ago; otherwise how long until it may.
    pub fn read_only_start(&self, interval: Duration) -> Result<(), Duration> {
        let mut last = self
            .last_read_only
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(at) = *last {
            let since = now.duration_since(at);
            if since < interval {
                return Err(interval - since);
            }
        }
        *last = Some(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agents_long_polls_are_bounded_and_returned() {
        let polls = Arc::new(LongPolls::default());
        let agent = Uuid::now_v7();
        let a = polls.enter(agent, 2).unwrap();
        let b = polls.enter(agent, 2).unwrap();
        assert!(polls.enter(agent, 2).is_none());
        assert!(
            polls.enter(Uuid::now_v7(), 2).is_some(),
            "another agent's own"
        );
        drop(a);
        assert_eq!(polls.open(agent), 1);
        let _c = polls.enter(agent, 2).unwrap();
        drop(b);
        assert_eq!(polls.open(agent), 1);
    }

    #[test]
    fn read_only_reconciles_are_spaced() {
        let gate = ReconcileGate::default();
        assert!(gate.read_only_start(Duration::from_secs(60)).is_ok());
        let wait = gate.read_only_start(Duration::from_secs(60)).unwrap_err();
        assert!(wait > Duration::from_secs(59));
        assert!(gate.read_only_start(Duration::ZERO).is_ok());
    }
}
