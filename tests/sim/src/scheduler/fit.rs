//! Ollama's rules for fitting a model into VRAM and choosing what to evict (server/sched.go).

use crate::duration::KeepAlive;

/// A model after the first must fit in this share of the free VRAM (HEAD evicts when the
/// predicted size is more than 80% of free memory, sched.go:549-551).
pub const FIT_FRACTION: f64 = 0.8;

/// Whether a model needing `need` bytes may load next to `loaded` others with `free` bytes left.
/// The first model always loads (split between GPU and CPU if it must); later ones must fit.
pub fn fits(need: u64, free: u64, loaded: usize, max_loaded: usize) -> bool {
    loaded == 0 || (loaded < max_loaded && need as f64 <= FIT_FRACTION * free as f64)
}

/// A loaded runner as the eviction rule sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// Model name (Ollama sorts by model path; the name orders the same way for a node).
    pub name: &'a str,
    /// The runner's keep-alive.
    pub keep_alive: KeepAlive,
    /// No request holds it.
    pub idle: bool,
}

/// The runner to unload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Victim<'a> {
    /// Unload it now.
    Idle(&'a str),
    /// Set its keep-alive to 0 and wait for its requests to finish.
    Busy(&'a str),
}

/// `findRunnerToUnload`: not LRU. Sort by keep-alive (shortest first), then name; take the
/// first idle runner, or if none is idle the first one overall.
pub fn pick_victim<'a>(candidates: impl IntoIterator<Item = Candidate<'a>>) -> Option<Victim<'a>> {
    let mut sorted: Vec<Candidate<'a>> = candidates.into_iter().collect();
    sorted.sort_by(|a, b| {
        a.keep_alive
            .sort_key()
            .cmp(&b.keep_alive.sort_key())
            .then(a.name.cmp(b.name))
    });
    sorted
        .iter()
        .find(|c| c.idle)
        .map(|c| Victim::Idle(c.name))
        .or_else(|| sorted.first().map(|c| Victim::Busy(c.name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cand(name: &str, secs: u64, idle: bool) -> Candidate<'_> {
        Candidate {
            name,
            keep_alive: KeepAlive::For(Duration::from_secs(secs)),
            idle,
        }
    }

    #[test]
    fn shortest_keep_alive_idle_runner_goes_first_not_lru() {
        let victims = [
            cand("a", 600, true),
            cand("b", 60, true),
            cand("c", 30, false),
        ];
        assert_eq!(pick_victim(victims), Some(Victim::Idle("b")));
    }

    #[test]
    fn ties_break_by_name_and_forever_sorts_last() {
        let forever = Candidate {
            name: "a",
            keep_alive: KeepAlive::Forever,
            idle: true,
        };
        assert_eq!(
            pick_victim([forever, cand("d", 300, true), cand("c", 300, true)]),
            Some(Victim::Idle("c"))
        );
    }

    #[test]
    fn all_busy_picks_the_shortest_to_drain() {
        assert_eq!(
            pick_victim([cand("a", 600, false), cand("b", 60, false)]),
            Some(Victim::Busy("b"))
        );
        assert_eq!(pick_victim([]), None);
    }

    #[test]
    fn fitting() {
        assert!(fits(100, 0, 0, 3), "the first model always loads");
        assert!(fits(80, 100, 1, 3));
        assert!(!fits(81, 100, 1, 3));
        assert!(!fits(1, 100, 3, 3), "max_loaded_models");
    }
}
