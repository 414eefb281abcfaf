//! The parallel slots of one loaded runner and their prompt caches.
//!
//! A runner has `num_parallel` slots behind a FIFO semaphore (Ollama's weighted semaphore):
//! requests wait for a slot in arrival order, without bound. Each slot remembers the tokens it
//! last processed; a new request takes the free slot sharing the longest prefix with its prompt
//! and skips prefilling that prefix, always re-evaluating at least one token (the Go runner's
//! rule). Ties go to the least recently used slot, and a request matching no slot takes the least
//! recently used one, so that a cold request does not wipe a warm cache needlessly.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::tokenizer::{self, Token};

#[derive(Debug, Default)]
struct SlotCache {
    tokens: Vec<Token>,
    last_used: u64,
}

/// A free slot, ordered by last use: iterating a set of these visits the least recently used
/// first.
type FreeKey = (u64, usize);

/// The slots' caches, with the free ones indexed so that choosing a slot costs the number of
/// free slots sharing the prompt's first token, not the number of slots (benchmarks run
/// thousands).
#[derive(Debug, Default)]
struct Caches {
    slots: Vec<SlotCache>,
    free: BTreeSet<FreeKey>,
    free_by_first_token: HashMap<Token, BTreeSet<FreeKey>>,
}

impl Caches {
    /// The free slot to use for `prompt` and the length of its matching prefix.
    fn choose(&self, prompt: &[Token]) -> (FreeKey, usize) {
        let mut best: Option<(FreeKey, usize)> = None;
        let candidates = prompt.first().and_then(|t| self.free_by_first_token.get(t));
        for &key in candidates.into_iter().flatten() {
            let common = common_prefix(&self.slots[key.1].tokens, prompt);
            if best.is_none_or(|(_, c)| common > c) {
                best = Some((key, common));
                if common == prompt.len() {
                    break;
                }
            }
        }
        best.unwrap_or_else(|| {
            (
                *self.free.first().expect("a permit guarantees a free slot"),
                0,
            )
        })
    }

    fn take(&mut self, key: FreeKey) {
        self.free.remove(&key);
        if let Some(first) = self.slots[key.1].tokens.first() {
            if let Some(set) = self.free_by_first_token.get_mut(first) {
                set.remove(&key);
                if set.is_empty() {
                    self.free_by_first_token.remove(first);
                }
            }
        }
    }

    fn put_back(&mut self, index: usize, tokens: Vec<Token>) {
        let slot = &mut self.slots[index];
        slot.tokens = tokens;
        let key = (slot.last_used, index);
        self.free.insert(key);
        if let Some(first) = slot.tokens.first() {
            self.free_by_first_token
                .entry(*first)
                .or_default()
                .insert(key);
        }
    }
}

/// The slots of one runner.
#[derive(Debug)]
pub struct SlotPool {
    permits: Arc<Semaphore>,
    caches: Mutex<Caches>,
    busy: AtomicUsize,
    waiting: AtomicUsize,
    uses: AtomicU64,
    capacity: usize,
}

impl SlotPool {
    /// A pool of `n` empty slots.
    pub fn new(n: usize) -> Self {
        let slots: Vec<SlotCache> = (0..n)
            .map(|i| SlotCache {
                tokens: Vec::new(),
                last_used: i as u64,
            })
            .collect();
        let free = slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.last_used, i))
            .collect();
        Self {
            permits: Arc::new(Semaphore::new(n)),
            caches: Mutex::new(Caches {
                slots,
                free,
                free_by_first_token: HashMap::new(),
            }),
            busy: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            uses: AtomicU64::new(n as u64),
            capacity: n,
        }
    }

    /// Waits (FIFO) for a free slot and claims the one whose cache best matches `prompt`.
    pub async fn claim(self: &Arc<Self>, prompt: &[Token]) -> Slot {
        let permit = {
            let _waiting = Counted::new(&self.waiting);
            Arc::clone(&self.permits)
                .acquire_owned()
                .await
                .expect("slot semaphore is never closed")
        };
        let mut caches = self.caches.lock().unwrap_or_else(PoisonError::into_inner);
        let (key, common) = caches.choose(prompt);
        caches.take(key);
        let index = key.1;
        let cache = &mut caches.slots[index];
        cache.last_used = self.uses.fetch_add(1, Ordering::Relaxed);
        let mut tokens = std::mem::take(&mut cache.tokens);
        drop(caches);
        tokens.clear();
        tokens.extend_from_slice(prompt);
        self.busy.fetch_add(1, Ordering::Relaxed);
        Slot {
            pool: Arc::clone(self),
            index,
            cached: common.min(prompt.len().saturating_sub(1)),
            tokens,
            _permit: permit,
        }
    }

    /// Slots processing a request right now.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// A claimed slot; dropping it stores what it processed as its cache and frees it.
#[derive(Debug)]
pub struct Slot {
    pool: Arc<SlotPool>,
    index: usize,
    cached: usize,
    tokens: Vec<Token>,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    /// Leading prompt tokens found in the slot's cache, which need no prefill.
    pub fn cached(&self) -> usize {
        self.cached
    }

    /// Records generated text, which becomes part of the cache for the next request.
    pub fn push_generated(&mut self, text: &str) {
        tokenizer::tokenize_into(text, &mut self.tokens);
    }

    /// Everything the slot has processed: prompt and generated tokens (Ollama's `context`).
    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// Slots of the same runner busy right now, this one included.
    pub fn busy_in_runner(&self) -> usize {
        self.pool.busy()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let tokens = std::mem::take(&mut self.tokens);
        self.pool
            .caches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put_back(self.index, tokens);
        self.pool.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts itself in a gauge while alive, so cancelled waits are uncounted too.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(gauge: &'a AtomicUsize) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn common_prefix(a: &[Token], b: &[Token]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn waiters_get_slots_in_arrival_order() {
        let pool = Arc::new(SlotPool::new(1));
        let first = pool.claim(&[1]).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (pool, order) = (Arc::clone(&pool), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                let slot = pool.claim(&[i]).await;
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(slot);
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(pool.waiting(), 5);
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(pool.waiting(), 0);
        assert_eq!(pool.busy(), 0);
    }

    #[tokio::test]
    async fn the_best_matching_free_slot_is_reused() {
        let pool = Arc::new(SlotPool::new(2));
        let a = pool.claim(&[1, 2, 3]).await;
        let b = pool.claim(&[7, 8, 9]).await;
        assert_eq!((a.cached(), b.cached()), (0, 0));
        drop((a, b));
        let c = pool.claim(&[7, 8, 9, 10]).await;
        assert_eq!(c.cached(), 3);
        drop(c);
        let whole = pool.claim(&[7, 8, 9, 10]).await;
        assert_eq!(whole.cached(), 3, "at least one token is re-evaluated");
    }

    #[tokio::test]
    async fn a_cold_request_takes_the_least_recently_used_slot() {
        let pool = Arc::new(SlotPool::new(3));
        let slots = [
            pool.claim(&[1, 1]).await,
            pool.claim(&[2, 2]).await,
            pool.claim(&[3, 3]).await,
        ];
        drop(slots);
        drop(pool.claim(&[2, 2, 9]).await);
        drop(pool.claim(&[3, 3, 9]).await);
        // Slot 0 ([1, 1]) is now the least recently used, so a cold prompt overwrites it.
        drop(pool.claim(&[7]).await);
        assert_eq!(pool.claim(&[2, 2, 9, 4]).await.cached(), 3);
        assert_eq!(pool.claim(&[1, 1, 5]).await.cached(), 0);
    }

    #[tokio::test]
    async fn generated_text_extends_the_cache() {
        let pool = Arc::new(SlotPool::new(1));
        let prompt = tokenizer::tokenize("hello there");
        let mut slot = pool.claim(&prompt).await;
        slot.push_generated(" general kenobi");
        drop(slot);
        let next = tokenizer::tokenize("hello there general kenobi you are");
        // hello, there, gene, ral, kenobi: the reply's tokens are cached too.
        assert_eq!(pool.claim(&next).await.cached(), 5);
    }
}
