//! A cap on how many of a thing are held at once (connections, weight watchers, SQL queries),
//! which a configuration reload may raise or lower while places are held.
//!
//! (Its example runs as the unit test `examples::example`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// At most `max` places held at once.
#[derive(Debug, Clone)]
pub(crate) struct Cap {
    places: Arc<Semaphore>,
    max: Arc<AtomicUsize>,
    /// Places a lowered cap still has to take back as they come free.
    owed: Arc<AtomicUsize>,
}

/// A place under a [`Cap`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Place(#[allow(dead_code, reason = "held, not read")] OwnedSemaphorePermit);

impl Cap {
    /// A cap of `max` (at least 1).
    pub(crate) fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            places: Arc::new(Semaphore::new(max)),
            max: Arc::new(AtomicUsize::new(max)),
            owed: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A place, or `None` when all are held.
    pub(crate) fn try_take(&self) -> Option<Place> {
        self.places.clone().try_acquire_owned().ok().map(Place)
    }

    /// A place, once one is free (first come, first served).
    pub(crate) async fn take(&self) -> Place {
        Place(
            self.places
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed"),
        )
    }

    /// `n` places at once (a budget counted in units), or `None` when fewer are free.
    pub(crate) fn try_take_many(&self, n: u32) -> Option<Place> {
        self.places
            .clone()
            .try_acquire_many_owned(n)
            .ok()
            .map(Place)
    }

    /// `n` places at once, waiting until they are free; `None` only if `n` exceeds what a cap
    /// can ever give.
    pub(crate) async fn take_many(&self, n: u32) -> Option<Place> {
        self.places
            .clone()
            .acquire_many_owned(n)
            .await
            .ok()
            .map(Place)
    }

    /// Places free now.
    pub(crate) fn free(&self) -> usize {
        self.places.available_permits()
    }

    /// The cap in force.
    pub(crate) fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Places held now.
    pub(crate) fn held(&self) -> usize {
        (self.max() + self.owed.load(Ordering::Relaxed))
            .saturating_sub(self.places.available_permits())
    }

    /// Sets a new cap (at least 1). A higher one admits more at once; a lower one takes effect
    /// as places come free (nothing held is taken away). Needs a tokio runtime when lowering.
    pub(crate) fn set(&self, max: usize) {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        let old = self.max.swap(max, Ordering::Relaxed);
        if max > old {
            self.places.add_permits(max - old);
        } else if max < old {
            let fewer = old - max;
            self.owed.fetch_add(fewer, Ordering::Relaxed);
            let (places, owed) = (self.places.clone(), self.owed.clone());
            tokio::spawn(async move {
                let count = u32::try_from(fewer).unwrap_or(u32::MAX);
                if let Ok(taken) = places.acquire_many_owned(count).await {
                    taken.forget();
                    owed.fetch_sub(fewer, Ordering::Relaxed);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lowered_cap_takes_places_back_as_they_come_free() {
        let cap = Cap::new(3);
        let held: Vec<_> = (0..3).map(|_| cap.try_take().unwrap()).collect();
        cap.set(1);
        assert_eq!(cap.max(), 1);
        assert_eq!(cap.held(), 3, "nothing held is taken away");
        drop(held);
        // The task that takes the two places back runs once the places are free.
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert_eq!(cap.held(), 0);
        let one = cap.try_take().expect("one place under the new cap");
        assert!(cap.try_take().is_none(), "only one under the new cap");
        drop(one);
    }

    #[test]
    fn zero_is_taken_as_one() {
        let cap = Cap::new(0);
        assert_eq!(cap.max(), 1);
        assert!(cap.try_take().is_some());
    }
}

#[cfg(test)]
mod examples {
    //! The examples of this module's documentation, run as unit tests (the items are
    //! internal to the crate, which doc tests cannot reach).

    use crate::util::cap::Cap;

    #[tokio::test(flavor = "current_thread")]
    async fn main() {
        let cap = Cap::new(1);
        let held = cap.try_take().expect("one place");
        assert!(cap.try_take().is_none(), "the cap is reached");
        cap.set(2);
        assert_eq!((cap.max(), cap.held()), (2, 1));
        let second = cap.try_take().expect("the raised cap admits a second");
        drop((held, second));
    }
}
