//! What live traffic shows about models and providers: each model's recent latencies (for alias
//! routing's p95) and each provider's recent outcomes (status, success rate, consecutive
//! failures), kept in memory over a bounded window and written to `provider_health` by a
//! background task, never on the request path.
//!
//! A provider is `down` after [`DOWN_AFTER_FAILURES`] consecutive failures: alias routing skips
//! it for [`DOWN_RETRY_AFTER`], then tries it again (a success clears it). It is `degraded` when
//! under 95 % of its recent requests succeeded. Only the upstream's own failures count (5xx,
//! timeouts, unreachable): a client's bad request says nothing about the provider.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ledger::health::ProviderHealth;

use super::routing::Observed;

/// Outcomes kept per model and per provider.
pub const WINDOW: usize = 256;
/// Consecutive failures after which a provider counts as down.
pub const DOWN_AFTER_FAILURES: u32 = 5;
/// How long a down provider is skipped by alias routing before it is tried again (one more
/// failure marks it down for as long again; a success clears it).
pub const DOWN_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Distinct models and providers tracked (label-like values from traffic are bounded).
pub const TRACKED_MAX: usize = 10_000;

#[derive(Debug, Default)]
struct Window {
    /// (latency ms, success), newest last.
    outcomes: VecDeque<(u32, bool)>,
    consecutive_failures: u32,
    last_error: Option<String>,
    last_failure: Option<Instant>,
}

impl Window {
    fn push(&mut self, latency_ms: u32, success: bool, error: Option<&str>) {
        if self.outcomes.len() == WINDOW {
            self.outcomes.pop_front();
        }
        self.outcomes.push_back((latency_ms, success));
        if success {
            self.consecutive_failures = 0;
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            self.last_failure = Some(Instant::now());
            self.last_error = error.map(|e| e.chars().take(500).collect());
        }
    }

    fn p95(&self) -> Option<u32> {
        let mut latencies: Vec<u32> = self
            .outcomes
            .iter()
            .filter(|(_, ok)| *ok)
            .map(|(l, _)| *l)
            .collect();
        if latencies.is_empty() {
            return None;
        }
        latencies.sort_unstable();
        // Nearest rank: the smallest value with at least 95 % of the samples at or below it.
        let rank = (latencies.len() * 95).div_ceil(100).max(1);
        latencies.get(rank - 1).copied()
    }
}

/// The gateway's observations, shared by every request.
#[derive(Debug, Default)]
pub struct Observations {
    models: Mutex<HashMap<String, Window>>,
    providers: Mutex<HashMap<String, Window>>,
}

impl Observations {
    /// Records one finished upstream call.
    pub fn record(
        &self,
        model: &str,
        provider: &str,
        latency_ms: u32,
        success: bool,
        error: Option<&str>,
    ) {
        for (map, key) in [(&self.models, model), (&self.providers, provider)] {
            let mut map = map
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !map.contains_key(key) && map.len() >= TRACKED_MAX {
                continue;
            }
            map.entry(key.to_owned())
                .or_default()
                .push(latency_ms, success, error);
        }
    }

    /// Every provider's current health, for `provider_health`.
    pub fn provider_rows(&self) -> Vec<ProviderHealth> {
        let map = self
            .providers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter()
            .map(|(provider, w)| {
                let n = w.outcomes.len() as u64;
                let successes = w.outcomes.iter().filter(|(_, ok)| *ok).count() as u64;
                let ok_latencies: Vec<u64> = w
                    .outcomes
                    .iter()
                    .filter(|(_, ok)| *ok)
                    .map(|(l, _)| u64::from(*l))
                    .collect();
                let avg = (!ok_latencies.is_empty())
                    .then(|| ok_latencies.iter().sum::<u64>() / ok_latencies.len() as u64);
                let rate = (n > 0).then(|| successes * 1000 / n);
                let status = if w.consecutive_failures >= DOWN_AFTER_FAILURES {
                    "down"
                } else if rate.is_some_and(|r| r < 950) {
                    "degraded"
                } else {
                    "healthy"
                };
                ProviderHealth {
                    provider: provider.clone(),
                    status,
                    avg_latency_ms: avg,
                    p95_latency_ms: w.p95().map(u64::from),
                    success_rate_permille: rate,
                    consecutive_failures: w.consecutive_failures,
                    last_error: w.last_error.clone(),
                }
            })
            .collect()
    }
}

impl Observed for Observations {
    fn p95_latency_ms(&self, model: &str) -> Option<u32> {
        self.models
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(model)
            .and_then(Window::p95)
    }

    fn provider_down(&self, provider: &str) -> bool {
        self.providers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(provider)
            .is_some_and(|w| {
                w.consecutive_failures >= DOWN_AFTER_FAILURES
                    && w.last_failure
                        .is_some_and(|at| at.elapsed() < DOWN_RETRY_AFTER)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p95_is_the_nearest_rank_over_successes() {
        let o = Observations::default();
        for ms in 1..=100 {
            o.record("m", "p", ms, true, None);
        }
        o.record("m", "p", 100_000, false, Some("boom"));
        assert_eq!(o.p95_latency_ms("m"), Some(95));
        assert_eq!(o.p95_latency_ms("other"), None);
    }

    #[test]
    fn a_provider_is_down_after_consecutive_failures_until_a_success() {
        let o = Observations::default();
        for _ in 0..DOWN_AFTER_FAILURES {
            assert!(!o.provider_down("p"));
            o.record("m", "p", 10, false, Some("502 from upstream"));
        }
        assert!(o.provider_down("p"));
        let row = o.provider_rows().pop().unwrap();
        assert_eq!(
            (row.status, row.consecutive_failures),
            ("down", DOWN_AFTER_FAILURES)
        );
        assert_eq!(row.last_error.as_deref(), Some("502 from upstream"));
        assert_eq!(row.success_rate_permille, Some(0));
        o.record("m", "p", 10, true, None);
        assert!(!o.provider_down("p"));
        assert_eq!(o.provider_rows().pop().unwrap().status, "degraded");
    }

    #[test]
    fn windows_are_bounded() {
        let o = Observations::default();
        for i in 0..(WINDOW as u32 * 3) {
            o.record("m", "p", i, true, None);
        }
        // Only the newest WINDOW latencies count.
        assert!(o.p95_latency_ms("m").unwrap() >= WINDOW as u32 * 2);
    }
}
