//! The order one target's webhooks may be sent in, and when a failed one is tried again.

use super::Delivery;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// A webhook in a [`Schedule`]: its place in creation order and its channels.
#[derive(Debug)]
struct Entry {
    seq: u64,
    d: Arc<Delivery>,
    channels: Vec<Arc<str>>,
}

/// One target's webhooks and the order they may be sent in.
///
/// * First attempts are made one at a time, in creation order (the "line"), so that a target
///   that answers gets everything in the order it was created.
/// * A webhook whose attempt failed leaves the line and retries on its own. Until it is
///   delivered or given up it holds its channels: a later webhook that carries one of them is
///   parked, in order, and goes (first, before newer ones) once no older webhook holds any of
///   its channels. Pusher orders webhooks per channel; other channels are never held up.
/// * At most `capacity` webhooks (`webhooks.queue_capacity`), counting the ones waiting,
///   parked, being sent and retrying.
#[derive(Debug)]
pub(super) struct Schedule {
    capacity: usize,
    next_seq: u64,
    /// Not looked at yet, in creation order.
    waiting: VecDeque<Entry>,
    /// Behind an older webhook that holds one of their channels, by creation order.
    parked: BTreeMap<u64, Entry>,
    /// Freed from `parked`, in creation order; older than everything in `waiting`.
    ready: VecDeque<Entry>,
    /// Being sent or retrying.
    active: BTreeMap<u64, Entry>,
    /// The active webhook on the line (its first attempt is running).
    line: Option<u64>,
    /// How many parked, ready or active webhooks carry each channel.
    holds: HashMap<Arc<str>, usize>,
    /// A finished webhook shared a channel with a parked one: look at `parked` again.
    rescan: bool,
}

impl Schedule {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            next_seq: 0,
            waiting: VecDeque::new(),
            parked: BTreeMap::new(),
            ready: VecDeque::new(),
            active: BTreeMap::new(),
            line: None,
            holds: HashMap::new(),
            rescan: false,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.waiting.len() + self.parked.len() + self.ready.len() + self.active.len()
    }

    /// Queues `d` behind the others, or hands it back when the target is full.
    pub(super) fn offer(&mut self, d: Arc<Delivery>) -> Result<(), Arc<Delivery>> {
        if self.len() >= self.capacity {
            return Err(d);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let channels = d.channels();
        self.waiting.push_back(Entry { seq, d, channels });
        Ok(())
    }

    /// Whether a webhook carrying `channel` would now wait behind an older one that holds it.
    pub(super) fn holds(&self, channel: &str) -> bool {
        self.holds.contains_key(channel)
    }

    fn hold(&mut self, channels: &[Arc<str>]) {
        for c in channels {
            *self.holds.entry(c.clone()).or_default() += 1;
        }
    }

    /// The webhook to attempt next on the line, if the line is free and one may go.
    pub(super) fn next(&mut self) -> Option<(u64, Arc<Delivery>)> {
        if self.line.is_some() {
            return None;
        }
        if self.rescan {
            self.release();
        }
        let e = match self.ready.pop_front() {
            Some(e) => e,
            None => loop {
                let e = self.waiting.pop_front()?;
                let held = e.channels.iter().any(|c| self.holds.contains_key(c));
                self.hold(&e.channels);
                if held {
                    self.parked.insert(e.seq, e);
                } else {
                    break e;
                }
            },
        };
        let out = (e.seq, e.d.clone());
        self.line = Some(e.seq);
        self.active.insert(e.seq, e);
        Some(out)
    }

    /// Moves the parked webhooks that no older webhook holds up any more to `ready`.
    fn release(&mut self) {
        self.rescan = false;
        let mut taken: HashSet<Arc<str>> = self
            .active
            .values()
            .chain(self.ready.iter())
            .flat_map(|e| e.channels.iter().cloned())
            .collect();
        let mut free = Vec::new();
        for e in self.parked.values() {
            if !e.channels.iter().any(|c| taken.contains(c)) {
                free.push(e.seq);
            }
            taken.extend(e.channels.iter().cloned());
        }
        for seq in free {
            if let Some(e) = self.parked.remove(&seq) {
                self.ready.push_back(e);
            }
        }
    }

    /// The line's webhook failed its attempt and retries on its own; the line is free.
    pub(super) fn leave_line(&mut self, seq: u64) {
        if self.line == Some(seq) {
            self.line = None;
        }
    }

    /// `seq` was delivered or given up: it frees its place and its channels.
    pub(super) fn done(&mut self, seq: u64) {
        self.leave_line(seq);
        let Some(e) = self.active.remove(&seq) else {
            return;
        };
        for c in &e.channels {
            if let Some(n) = self.holds.get_mut(c) {
                *n -= 1;
                if *n == 0 {
                    self.holds.remove(c);
                } else {
                    // Someone younger carries this channel and may be free now.
                    self.rescan = true;
                }
            }
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Everything not yet delivered or given up, in creation order (for the spool).
    pub(super) fn take_all(&mut self) -> Vec<Arc<Delivery>> {
        let mut all: Vec<Entry> = self.waiting.drain(..).collect();
        all.extend(self.ready.drain(..));
        all.extend(std::mem::take(&mut self.parked).into_values());
        all.extend(std::mem::take(&mut self.active).into_values());
        all.sort_by_key(|e| e.seq);
        self.holds.clear();
        self.line = None;
        self.rescan = false;
        all.into_iter().map(|e| e.d).collect()
    }
}

/// The wait before the attempt that follows `failures` failed ones: 1 s, doubling, at most 60 s.
pub(super) fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(6)).min(Duration::from_secs(60))
}

/// Whether an attempt made after waiting `wait` from `now_ms` still starts inside the retry
/// window that ends at `window_end_ms` (receivers reject stale bodies).
pub(super) fn retry_fits(now_ms: u64, wait: Duration, window_end_ms: u64) -> bool {
    now_ms + wait.as_millis() as u64 <= window_end_ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::event::HookName;

    fn delivery(body: &str, channels: &[&str]) -> Delivery {
        Delivery {
            app_id: "app-id".into(),
            url: "http://127.0.0.1:9/hook".into(),
            key: "app-key".into(),
            signature: String::new(),
            body: body.into(),
            headers: Vec::new(),
            created_ms: 0,
            events: channels
                .iter()
                .map(|c| (HookName::ChannelOccupied, Arc::from(*c)))
                .collect(),
        }
    }

    /// A delivery without events, named by a number.
    fn queued(n: usize) -> Arc<Delivery> {
        Arc::new(delivery(&n.to_string(), &[]))
    }

    /// A delivery named `body` whose events are on `channels`.
    fn on(body: &str, channels: &[&str]) -> Arc<Delivery> {
        Arc::new(delivery(body, channels))
    }

    fn bodies(s: &mut Schedule) -> Vec<String> {
        s.take_all().iter().map(|d| d.body.clone()).collect()
    }

    /// Takes the next webhook off the line; its body and place.
    fn next(s: &mut Schedule) -> Option<(String, u64)> {
        s.next().map(|(seq, d)| (d.body.clone(), seq))
    }

    #[test]
    fn a_schedule_holds_its_capacity_in_order_the_webhook_being_sent_included() {
        let mut s = Schedule::new(3);
        for n in 0..3 {
            assert!(s.offer(queued(n)).is_ok());
        }
        assert_eq!(s.offer(queued(3)).unwrap_err().body, "3", "full");
        let (first, seq) = next(&mut s).unwrap();
        assert_eq!(first, "0");
        assert!(s.next().is_none(), "one first attempt at a time");
        assert!(s.offer(queued(4)).is_err(), "the one being sent counts");
        s.done(seq);
        assert!(
            s.offer(queued(5)).is_ok(),
            "a delivered webhook frees its place"
        );
        assert_eq!(bodies(&mut s), ["1", "2", "5"]);
        assert!(s.next().is_none());
        let mut one = Schedule::new(0);
        assert!(one.offer(queued(0)).is_ok(), "a capacity of 0 holds one");
        assert!(one.offer(queued(1)).is_err());
    }

    #[test]
    fn a_retrying_webhook_holds_up_its_own_channel_only() {
        let mut s = Schedule::new(10);
        for (b, ch) in [
            ("a1", "A"),
            ("b1", "B"),
            ("a2", "A"),
            ("c1", "C"),
            ("a3", "A"),
        ] {
            s.offer(on(b, &[ch])).unwrap();
        }
        let (a1, a1_seq) = next(&mut s).unwrap();
        assert_eq!(a1, "a1");
        s.leave_line(a1_seq); // its attempt failed: it retries off the line
        let (b1, b1_seq) = next(&mut s).unwrap();
        assert_eq!(b1, "b1", "the retry does not hold the line");
        s.done(b1_seq);
        let (c1, c1_seq) = next(&mut s).unwrap();
        assert_eq!(c1, "c1", "a2 waits behind a1; c1 does not");
        s.done(c1_seq);
        assert!(s.next().is_none(), "a2 and a3 wait while a1 retries");
        assert!(s.holds("A") && !s.holds("B"));
        assert_eq!(s.len(), 3, "retrying and parked webhooks keep their places");
        s.offer(on("b2", &["B"])).unwrap();
        let (b2, b2_seq) = next(&mut s).unwrap();
        assert_eq!(b2, "b2", "other channels still go");
        s.done(b2_seq);
        s.done(a1_seq); // delivered at last
        let (a2, a2_seq) = next(&mut s).unwrap();
        assert_eq!(a2, "a2", "A's next webhook goes once a1 is through");
        s.leave_line(a2_seq); // fails too
        assert!(s.next().is_none(), "a3 waits behind a2 now");
        s.done(a2_seq);
        assert_eq!(next(&mut s).unwrap().0, "a3");
    }

    #[test]
    fn a_body_with_a_held_channel_waits_whole_and_holds_its_other_channels() {
        let mut s = Schedule::new(10);
        s.offer(on("a1", &["A"])).unwrap();
        let (_, a1) = next(&mut s).unwrap();
        s.leave_line(a1);
        s.offer(on("a2+b1", &["A", "B"])).unwrap();
        s.offer(on("b2", &["B"])).unwrap();
        s.offer(on("c1", &["C"])).unwrap();
        let (c1, c1_seq) = next(&mut s).unwrap();
        assert_eq!(c1, "c1", "b2 keeps B's order behind the parked batch");
        s.done(c1_seq);
        assert!(s.next().is_none());
        s.done(a1);
        let (batch, batch_seq) = next(&mut s).unwrap();
        assert_eq!(batch, "a2+b1");
        assert!(s.next().is_none(), "one first attempt at a time");
        s.done(batch_seq);
        assert_eq!(next(&mut s).unwrap().0, "b2");
    }

    #[test]
    fn the_spool_gets_every_webhook_in_creation_order_whatever_its_state() {
        let mut s = Schedule::new(10);
        for (b, ch) in [
            ("a1", "A"),
            ("b1", "B"),
            ("a2", "A"),
            ("c1", "C"),
            ("d1", "D"),
        ] {
            s.offer(on(b, &[ch])).unwrap();
        }
        let (_, a1) = next(&mut s).unwrap();
        s.leave_line(a1); // retrying
        let (_, b1) = next(&mut s).unwrap();
        s.leave_line(b1); // retrying; a2 gets parked on the next look
        assert_eq!(next(&mut s).unwrap().0, "c1"); // on the line
        assert_eq!(bodies(&mut s), ["a1", "b1", "a2", "c1", "d1"]);
        assert!(s.is_empty() && !s.holds("A"));
    }

    #[test]
    fn retries_back_off_from_one_second_to_a_minute() {
        let waits: Vec<u64> = (0..9).map(|f| backoff(f).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn no_attempt_starts_after_the_retry_window() {
        assert!(retry_fits(8_000, Duration::from_secs(2), 10_000));
        assert!(!retry_fits(8_001, Duration::from_secs(2), 10_000));
    }
}
