//! The console's recent history: the latest log lines of every app, kept while the console is on
//! so that a log opened now starts with what led up to it instead of an empty page.
//!
//! One ring for the whole server, bounded in bytes (whatever the number of apps), in which every
//! line has a sequence number. A viewer attaches to the live feed first and reads the history
//! second; the sequence number then tells which live lines it already got from the history, and
//! the event id the browser sends back when it reconnects (`Last-Event-ID`) tells what it saw.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;

/// Lines of its app a newly opened log starts with: a few screens of what happened just before,
/// sent at once (about 40 KB of JSON), and small enough to read without scrolling for long.
pub const HISTORY_LINES: usize = 300;

/// Bytes the history may hold, server-wide. It bounds the memory whatever the number of apps and
/// the size of their payloads: with 256-byte payloads that is about 2,500 lines, so on a server
/// with many busy apps a quiet app may keep fewer than [`HISTORY_LINES`].
pub const HISTORY_BYTES: usize = 1 << 20;

/// What a kept line costs beyond the text it holds (its slot, the `Arc` headers).
pub const OVERHEAD_BYTES: usize = 128;

/// The ring of recent lines; `T` is what a line is kept as until someone reads it.
#[derive(Debug)]
pub struct History<T> {
    /// Tells this process's event ids from those of an earlier run or another node.
    boot: u64,
    budget: usize,
    ring: Mutex<Ring<T>>,
}

#[derive(Debug)]
struct Ring<T> {
    items: VecDeque<Kept<T>>,
    bytes: usize,
    last_seq: u64,
}

#[derive(Debug)]
struct Kept<T> {
    seq: u64,
    app: Arc<str>,
    weight: usize,
    item: T,
}

impl<T: Clone> History<T> {
    /// An empty history holding at most `budget` bytes (as the weights given to `keep` count them).
    pub fn new(budget: usize) -> Self {
        Self {
            boot: rand::random_range(1..u64::from(u32::MAX)),
            budget,
            ring: Mutex::new(Ring {
                items: VecDeque::new(),
                bytes: 0,
                last_seq: 0,
            }),
        }
    }

    /// Keeps `item`, a line of `app` that costs `weight` bytes, dropping the oldest lines beyond
    /// the budget. Returns the line's sequence number.
    pub fn keep(&self, app: &Arc<str>, item: T, weight: usize) -> u64 {
        let mut r = self.ring.lock();
        r.last_seq += 1;
        let seq = r.last_seq;
        r.bytes += weight;
        r.items.push_back(Kept {
            seq,
            app: app.clone(),
            weight,
            item,
        });
        while r.bytes > self.budget {
            let Some(old) = r.items.pop_front() else {
                break;
            };
            r.bytes -= old.weight;
        }
        seq
    }

    /// The latest `max` lines of `app` numbered above `after`, oldest first, and the last number
    /// given out so far: a live line numbered at most that is in the list or was not wanted.
    pub fn recent(&self, app: &str, after: u64, max: usize) -> (Vec<(u64, T)>, u64) {
        let r = self.ring.lock();
        let mut out: Vec<(u64, T)> = r
            .items
            .iter()
            .rev()
            .take_while(|k| k.seq > after)
            .filter(|k| &*k.app == app)
            .take(max)
            .map(|k| (k.seq, k.item.clone()))
            .collect();
        out.reverse();
        (out, r.last_seq)
    }

    /// The event id of line `seq`, as the feed sends it.
    pub fn event_id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.boot)
    }

    /// The sequence number an event id names, when it is one of this process's; 0 (everything)
    /// for an id of another run or node, or anything else.
    pub fn seq_of(&self, id: &str) -> u64 {
        match id.trim().split_once('-') {
            Some((boot, seq)) if boot.parse() == Ok(self.boot) => seq.parse().unwrap_or(0),
            _ => 0,
        }
    }

    /// Bytes held now (tests).
    pub fn bytes(&self) -> usize {
        self.ring.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_lines_of_an_app_oldest_first() {
        let h = History::new(1000);
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        for i in 0..10u32 {
            h.keep(if i % 2 == 0 { &a } else { &b }, i, 10);
        }
        let (lines, last) = h.recent("a", 0, 3);
        assert_eq!(last, 10);
        assert_eq!(lines, vec![(5, 4), (7, 6), (9, 8)]);
        // After a line already seen: only the later ones.
        assert_eq!(h.recent("a", 7, 300).0, vec![(9, 8)]);
        assert_eq!(h.recent("a", 10, 300).0, vec![]);
        assert_eq!(h.recent("nobody", 0, 300), (vec![], 10));
    }

    #[test]
    fn stays_within_its_budget() {
        let h = History::new(100);
        let a: Arc<str> = Arc::from("a");
        for i in 0..50u32 {
            h.keep(&a, i, 30);
            assert!(h.bytes() <= 100, "{} bytes after {i}", h.bytes());
        }
        // Three lines of 30 bytes fit in 100: the last three.
        assert_eq!(h.recent("a", 0, 300).0, vec![(48, 47), (49, 48), (50, 49)]);
        // A line bigger than the whole budget is not kept, and nothing else is either.
        h.keep(&a, 99, 101);
        assert_eq!(h.bytes(), 0);
        assert_eq!(h.recent("a", 0, 300), (vec![], 51));
    }

    #[test]
    fn event_ids_name_this_process() {
        let h: History<u8> = History::new(10);
        assert_eq!(h.seq_of(&h.event_id(42)), 42);
        // Another run's (or node's) ids mean nothing here.
        assert_eq!(h.seq_of(&format!("{}-42", h.boot + 1)), 0);
        for bad in ["", "42", "-", "x-1", &format!("{}-x", h.boot)] {
            assert_eq!(h.seq_of(bad), 0, "{bad:?}");
        }
    }
}
