//! The dynamic batcher's queue for one model (as Triton's dynamic batcher): requests wait
//! until enough items for a batch are queued or the oldest has waited the maximum queueing
//! delay, then the batch is cut from the head. Pure: the caller passes the time.

use std::collections::VecDeque;

use crate::types::Millis;

/// One queued request of `items` inputs.
#[derive(Debug)]
pub struct Pending<T> {
    pub items: usize,
    pub bytes: usize,
    /// When it was queued (first queued, for a request put back after a lost node).
    pub since: Millis,
    pub req: T,
}

/// Why a request was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds `cap` items already.
    Full { cap: usize },
}

/// The queue of one model.
#[derive(Debug)]
pub struct Queue<T> {
    q: VecDeque<Pending<T>>,
    items: usize,
    cap: usize,
}

impl<T> Queue<T> {
    /// A queue that refuses requests beyond `cap` queued items.
    pub fn new(cap: usize) -> Self {
        Queue {
            q: VecDeque::new(),
            items: 0,
            cap,
        }
    }

    /// Queues a request at the tail; a full queue hands it back.
    pub fn push(&mut self, p: Pending<T>) -> Result<(), (Refused, Pending<T>)> {
        if self.items > 0 && self.items + p.items > self.cap {
            return Err((Refused::Full { cap: self.cap }, p));
        }
        self.items += p.items;
        self.q.push_back(p);
        Ok(())
    }

    /// Puts the requests of a batch that could not run back at the head, in order.
    pub fn requeue(&mut self, batch: Vec<Pending<T>>) {
        for p in batch.into_iter().rev() {
            self.items += p.items;
            self.q.push_front(p);
        }
    }

    /// Queued items.
    pub fn items(&self) -> usize {
        self.items
    }

    /// When the head must go even if the batch is not full.
    pub fn deadline(&self, max_delay: Millis) -> Option<Millis> {
        self.q.front().map(|p| p.since.saturating_add(max_delay))
    }

    /// Whether a batch should be cut now: a full batch is queued or the head waited long enough.
    pub fn ready(&self, now: Millis, batch: usize, max_delay: Millis) -> bool {
        self.items >= batch.max(1) || self.deadline(max_delay).is_some_and(|d| now >= d)
    }

    /// Cuts a batch from the head: whole requests while they fit in `batch` items and
    /// `max_bytes`, at least one (a request larger than a batch runs alone).
    pub fn cut(&mut self, batch: usize, max_bytes: usize) -> Vec<Pending<T>> {
        let mut out = Vec::new();
        let (mut n, mut bytes) = (0, 0);
        while let Some(p) = self.q.front() {
            let fits = n + p.items <= batch && bytes + p.bytes <= max_bytes;
            if !out.is_empty() && !fits {
                break;
            }
            let Some(p) = self.q.pop_front() else { break };
            n += p.items;
            bytes += p.bytes;
            self.items -= p.items;
            out.push(p);
        }
        out
    }

    /// Removes every queued request (the node shuts down).
    pub fn drain(&mut self) -> Vec<Pending<T>> {
        self.items = 0;
        self.q.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(items: usize, since: Millis, req: u32) -> Pending<u32> {
        Pending {
            items,
            bytes: items * 100,
            since,
            req,
        }
    }

    #[test]
    fn waits_for_a_full_batch_or_the_delay() {
        let mut q = Queue::new(100);
        q.push(p(1, 10, 1)).expect("push");
        q.push(p(2, 12, 2)).expect("push");
        assert!(!q.ready(14, 4, 5), "3 of 4 items, head waited 4 ms of 5");
        assert!(q.ready(15, 4, 5), "head waited 5 ms");
        assert_eq!(q.deadline(5), Some(15));
        q.push(p(1, 13, 3)).expect("push");
        assert!(q.ready(13, 4, 5), "a full batch goes at once");
        let b = q.cut(4, usize::MAX);
        assert_eq!(b.iter().map(|x| x.req).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(q.items(), 0);
        assert_eq!(q.deadline(5), None);
    }

    #[test]
    fn cuts_whole_requests_within_items_and_bytes() {
        let mut q = Queue::new(100);
        for (i, n) in [3, 3, 1, 9].into_iter().enumerate() {
            q.push(p(n, 0, i as u32)).expect("push");
        }
        // 3 + 3 = 6 fits in 7; the 1 fits too; the 9 does not.
        assert_eq!(
            q.cut(7, usize::MAX)
                .iter()
                .map(|x| x.req)
                .collect::<Vec<_>>(),
            [0, 1, 2]
        );
        // Larger than a batch: runs alone rather than never.
        assert_eq!(
            q.cut(7, usize::MAX)
                .iter()
                .map(|x| x.req)
                .collect::<Vec<_>>(),
            [3]
        );
        q.push(p(2, 0, 7)).expect("push");
        q.push(p(2, 0, 8)).expect("push");
        assert_eq!(q.cut(8, 250).len(), 1, "the byte budget cuts first");
        assert_eq!(q.items(), 2);
    }

    #[test]
    fn a_full_queue_refuses_and_requeue_keeps_order() {
        let mut q = Queue::new(4);
        q.push(p(3, 0, 1)).expect("push");
        let (why, back) = q.push(p(2, 0, 2)).expect_err("over the cap");
        assert_eq!(why, Refused::Full { cap: 4 });
        assert_eq!(back.req, 2);
        q.push(p(1, 1, 3)).expect("push");
        let b = q.cut(8, usize::MAX);
        q.push(p(1, 2, 4)).expect("push");
        q.requeue(b);
        assert_eq!(q.items(), 5);
        assert_eq!(
            q.cut(8, usize::MAX)
                .iter()
                .map(|x| x.req)
                .collect::<Vec<_>>(),
            [1, 3, 4]
        );
    }

    #[test]
    fn an_empty_queue_takes_one_request_larger_than_the_cap() {
        let mut q = Queue::new(4);
        q.push(p(6, 0, 1)).expect("alone it may exceed the cap");
        assert_eq!(q.drain().len(), 1);
        assert_eq!(q.items(), 0);
    }
}
