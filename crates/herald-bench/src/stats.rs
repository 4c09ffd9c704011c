//! Pure accounting: latency percentiles, and loss, duplicates and order of sequenced events.

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::sync::Mutex;

/// Latencies in microseconds, 1 µs to 10 minutes, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        Self(Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"))
    }

    /// Records one latency; values outside the range are clamped into it.
    pub fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.max(1));
    }

    /// Records one value that may be 0 (a send lag: on time is a real value, not 1 µs).
    pub fn record_zero_us(&mut self, us: u64) {
        self.0.saturating_record(us);
    }

    pub fn merge(&mut self, other: &Latency) {
        self.0.add(&other.0).expect("same bounds");
    }

    pub fn summary(&self) -> LatencySummary {
        let h = &self.0;
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Percentiles of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    pub fn to_json(self) -> Value {
        let r = |v: f64| (v * 1000.0).round() / 1000.0;
        json!({
            "count": self.count,
            "mean_ms": r(self.mean_ms),
            "p50_ms": r(self.p50_ms),
            "p90_ms": r(self.p90_ms),
            "p99_ms": r(self.p99_ms),
            "p99_9_ms": r(self.p999_ms),
            "max_ms": r(self.max_ms),
        })
    }
}

/// Latency histograms shared by many tasks: each task writes to one shard, so two cores rarely
/// contend; [`Sharded::merged`] adds them up at the end.
#[derive(Debug)]
pub struct Sharded(Vec<Mutex<Latency>>);

impl Sharded {
    pub fn new(shards: usize) -> Self {
        Self(
            (0..shards.max(1))
                .map(|_| Mutex::new(Latency::new()))
                .collect(),
        )
    }
    pub fn record_us(&self, shard: usize, us: u64) {
        self.0[shard % self.0.len()]
            .lock()
            .expect("not poisoned")
            .record_us(us);
    }
    pub fn merged(&self) -> Latency {
        let mut all = Latency::new();
        for s in &self.0 {
            all.merge(&s.lock().expect("not poisoned"));
        }
        all
    }
}

/// Each event's earliest and latest delivery over all its subscribers, by channel and sequence
/// number. Splits an end-to-end latency into the path to the first subscriber (the server's
/// handling of one publish) and the spread to the last (the fan-out itself).
#[derive(Debug)]
pub struct PerEvent(Vec<Mutex<Vec<(u32, u32)>>>);

impl PerEvent {
    pub fn new(channels: usize) -> Self {
        Self((0..channels).map(|_| Mutex::new(Vec::new())).collect())
    }

    pub fn record_us(&self, channel: usize, seq: u64, us: u64) {
        let Some(slot) = self.0.get(channel) else {
            return;
        };
        let (seq, us) = (seq as usize, us.min(u64::from(u32::MAX - 1)) as u32);
        let mut v = slot.lock().expect("not poisoned");
        if seq >= v.len() {
            v.resize(seq + 1, (u32::MAX, 0));
        }
        let e = &mut v[seq];
        *e = (e.0.min(us), e.1.max(us));
    }

    /// Distributions of (first delivery, last delivery, last minus first) over events seen.
    pub fn summaries(&self) -> (Latency, Latency, Latency) {
        let (mut first, mut last, mut spread) = (Latency::new(), Latency::new(), Latency::new());
        for slot in &self.0 {
            for &(lo, hi) in slot.lock().expect("not poisoned").iter() {
                if lo <= hi {
                    first.record_us(lo.into());
                    last.record_us(hi.into());
                    spread.record_us((hi - lo).into());
                }
            }
        }
        (first, last, spread)
    }
}

/// What one subscriber saw of one channel's sequence numbers (0, 1, 2, ...).
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    seen: Vec<u64>,
    /// One past the highest sequence number seen.
    high: u64,
    pub unique: u64,
    pub duplicates: u64,
    /// Events that arrived after an event with a higher sequence number.
    pub out_of_order: u64,
    /// Arrivals (duplicates included) and the sequence number of the latest one.
    pub arrivals: u64,
    last: Option<u64>,
    /// Arrivals with a lower sequence number than the arrival just before them: of the
    /// `arrivals - 1` adjacent pairs, those in the wrong order.
    pub adjacent_inversions: u64,
}

impl SeqTracker {
    pub fn record(&mut self, seq: u64) {
        self.arrivals += 1;
        if self.last.is_some_and(|l| seq < l) {
            self.adjacent_inversions += 1;
        }
        self.last = Some(seq);
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= 1 << bit;
        self.unique += 1;
        if seq < self.high {
            self.out_of_order += 1;
        } else {
            self.high = seq + 1;
        }
    }

    /// Distinct sequence numbers below `published` seen: what counts as delivered.
    pub fn delivered_of(&self, published: u64) -> u64 {
        let full = (published / 64) as usize;
        let mut n: u64 = self
            .seen
            .iter()
            .take(full)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        let rest = published % 64;
        if rest > 0 {
            if let Some(w) = self.seen.get(full) {
                n += u64::from((w & ((1u64 << rest) - 1)).count_ones());
            }
        }
        n
    }

    /// Sequence numbers seen that were never published (should be 0).
    pub fn unexpected(&self, published: u64) -> u64 {
        self.unique - self.delivered_of(published)
    }
}

/// Events numbered `0..published` that at least one of `trackers` (the subscribers of one
/// channel) never saw: events acknowledged by the server and not delivered everywhere. 0 when
/// there is no tracker.
pub fn events_missed_by_any<'a>(
    trackers: impl IntoIterator<Item = &'a SeqTracker>,
    published: u64,
) -> u64 {
    let words = published.div_ceil(64) as usize;
    let mut by_all = vec![u64::MAX; words];
    let mut any = false;
    for t in trackers {
        any = true;
        for (w, bits) in by_all.iter_mut().enumerate() {
            *bits &= t.seen.get(w).copied().unwrap_or(0);
        }
    }
    if !any {
        return 0;
    }
    let full = (published / 64) as usize;
    let mut seen: u64 = by_all
        .iter()
        .take(full)
        .map(|w| u64::from(w.count_ones()))
        .sum();
    let rest = published % 64;
    if rest > 0 {
        seen += u64::from((by_all[full] & ((1u64 << rest) - 1)).count_ones());
    }
    published - seen
}

/// Loss, duplicates and order over many subscribers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub unexpected: u64,
    /// Adjacent arrivals at one subscriber, and those in the wrong order (see [`SeqTracker`]).
    pub adjacent_pairs: u64,
    pub adjacent_inversions: u64,
}

impl Delivery {
    /// Adds one subscriber whose channel had `published` events accepted by the server.
    pub fn add(&mut self, t: &SeqTracker, published: u64) {
        let delivered = t.delivered_of(published);
        self.merge(&Delivery {
            expected: published,
            delivered,
            lost: published - delivered,
            duplicates: t.duplicates,
            out_of_order: t.out_of_order,
            unexpected: t.unexpected(published),
            adjacent_pairs: t.arrivals.saturating_sub(1),
            adjacent_inversions: t.adjacent_inversions,
        });
    }

    pub fn merge(&mut self, o: &Delivery) {
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.unexpected += o.unexpected;
        self.adjacent_pairs += o.adjacent_pairs;
        self.adjacent_inversions += o.adjacent_inversions;
    }

    /// Share of adjacent arrivals that came in the wrong order, in percent.
    pub fn inverted_pairs_pct(&self) -> f64 {
        if self.adjacent_pairs == 0 {
            0.0
        } else {
            self.adjacent_inversions as f64 * 100.0 / self.adjacent_pairs as f64
        }
    }

    pub fn loss_ratio(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.lost as f64 / self.expected as f64
        }
    }
}

/// Loss, duplicates and order channel by channel (each channel's subscribers added up): how
/// many channels saw any of each, not only the totals, so that loss or reordering confined to
/// a few channels (those published through another node, say) shows as such.
#[derive(Debug, Clone, Default)]
pub struct PerChannel(Vec<Delivery>);

/// What [`PerChannel`] says about all channels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelSummary {
    pub channels: u64,
    pub with_loss: u64,
    pub with_duplicates: u64,
    pub out_of_order: u64,
    /// The channel with the most events out of order, and how many (None: none had any).
    pub worst_out_of_order: Option<(usize, u64)>,
}

impl PerChannel {
    pub fn new(channels: usize) -> Self {
        Self(vec![Delivery::default(); channels])
    }

    /// Adds one subscriber of `channel`, which had `published` events accepted.
    pub fn add(&mut self, channel: usize, t: &SeqTracker, published: u64) {
        if let Some(d) = self.0.get_mut(channel) {
            d.add(t, published);
        }
    }

    pub fn total(&self) -> Delivery {
        let mut all = Delivery::default();
        self.0.iter().for_each(|d| all.merge(d));
        all
    }

    pub fn summary(&self) -> ChannelSummary {
        let count = |f: fn(&Delivery) -> bool| self.0.iter().filter(|d| f(d)).count() as u64;
        let worst = self
            .0
            .iter()
            .enumerate()
            .filter(|(_, d)| d.out_of_order > 0)
            .max_by_key(|(c, d)| (d.out_of_order, std::cmp::Reverse(*c)))
            .map(|(c, d)| (c, d.out_of_order));
        ChannelSummary {
            channels: self.0.len() as u64,
            with_loss: count(|d| d.lost > 0),
            with_duplicates: count(|d| d.duplicates > 0),
            out_of_order: count(|d| d.out_of_order > 0),
            worst_out_of_order: worst,
        }
    }
}

impl ChannelSummary {
    pub fn to_json(self) -> Value {
        json!({
            "channels": self.channels,
            "with_loss": self.with_loss,
            "with_duplicates": self.with_duplicates,
            "out_of_order": self.out_of_order,
            "worst_out_of_order": self.worst_out_of_order
                .map(|(c, n)| json!({ "channel": c, "events": n })),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut l = Latency::new();
        for us in 1..=10_000 {
            l.record_us(us);
        }
        let s = l.summary();
        assert_eq!(s.count, 10_000);
        assert!((s.p50_ms - 5.0).abs() < 0.01, "{s:?}");
        assert!((s.p99_ms - 9.9).abs() < 0.01, "{s:?}");
        assert!((s.p999_ms - 9.99).abs() < 0.01, "{s:?}");
        assert!((s.max_ms - 10.0).abs() < 0.01, "{s:?}");
    }

    #[test]
    fn empty_histogram_summarises_to_zero() {
        assert_eq!(Latency::new().summary(), LatencySummary::default());
    }

    #[test]
    fn sharded_histograms_merge() {
        let s = Sharded::new(4);
        for i in 0..100 {
            s.record_us(i, 1000);
        }
        let m = s.merged().summary();
        assert_eq!(m.count, 100);
        assert!((m.p50_ms - 1.0).abs() < 0.001);
    }

    #[test]
    fn per_event_first_last_and_spread() {
        let p = PerEvent::new(2);
        // Channel 0, event 0: delivered at 100, 300 and 200 µs; event 1 never; event 2 at 50.
        for us in [100, 300, 200] {
            p.record_us(0, 0, us);
        }
        p.record_us(0, 2, 50);
        p.record_us(5, 0, 1); // no such channel: ignored
        let (first, last, spread) = p.summaries();
        let (f, l, s) = (first.summary(), last.summary(), spread.summary());
        assert_eq!((f.count, l.count, s.count), (2, 2, 2));
        assert!(
            (f.max_ms - 0.1).abs() < 1e-9 && (l.max_ms - 0.3).abs() < 1e-9,
            "{f:?} {l:?}"
        );
        // Spreads 200 and 0, the latter clamped to the histogram's 1 µs floor.
        assert!((s.max_ms - 0.2).abs() < 1e-9 && s.p50_ms <= 0.001, "{s:?}");
    }

    #[test]
    fn in_order_complete_sequence_is_clean() {
        let mut t = SeqTracker::default();
        (0..200).for_each(|s| t.record(s));
        let mut d = Delivery::default();
        d.add(&t, 200);
        assert_eq!(
            d,
            Delivery {
                expected: 200,
                delivered: 200,
                adjacent_pairs: 199,
                ..Default::default()
            }
        );
    }

    #[test]
    fn counts_loss_duplicates_and_reordering() {
        let mut t = SeqTracker::default();
        for s in [0, 1, 3, 2, 2, 5, 70, 70, 6] {
            t.record(s);
        }
        // Seen: 0 1 2 3 5 6 70. Missing below 100: 93. Out of order: 2 (after 3), 6 (after 70).
        let mut d = Delivery::default();
        d.add(&t, 100);
        assert_eq!(d.delivered, 7);
        assert_eq!(d.lost, 93);
        assert_eq!(d.duplicates, 2);
        assert_eq!(d.out_of_order, 2);
        assert_eq!(d.unexpected, 0);
        // 9 arrivals, 8 adjacent pairs; lower than the one before: 2 (after 3), 6 (after 70).
        assert_eq!((d.adjacent_pairs, d.adjacent_inversions), (8, 2));
        assert!((d.inverted_pairs_pct() - 25.0).abs() < 1e-9);
    }

    #[test]
    fn an_early_event_counts_once_out_of_order_but_may_invert_several_pairs() {
        // Two nodes' events interleaved late: 0 2 1 4 3 -> 1 and 3 each arrive after a higher.
        let mut t = SeqTracker::default();
        [0, 2, 1, 4, 3].into_iter().for_each(|s| t.record(s));
        assert_eq!((t.out_of_order, t.adjacent_inversions), (2, 2));
        // One event held back behind many: 1 2 3 0 -> one out of order, one inverted pair.
        let mut t = SeqTracker::default();
        [1, 2, 3, 0].into_iter().for_each(|s| t.record(s));
        assert_eq!((t.out_of_order, t.adjacent_inversions), (1, 1));
        // A run that fell back: 3 4 5 0 1 2 -> three below the high mark, one inverted pair.
        let mut t = SeqTracker::default();
        [3, 4, 5, 0, 1, 2].into_iter().for_each(|s| t.record(s));
        assert_eq!((t.out_of_order, t.adjacent_inversions), (3, 1));
    }

    #[test]
    fn events_missed_by_any_subscriber() {
        let saw = |seqs: &[u64]| {
            let mut t = SeqTracker::default();
            seqs.iter().for_each(|s| t.record(*s));
            t
        };
        let all: Vec<u64> = (0..130).collect();
        let (full, a, b) = (
            saw(&all),
            saw(&all
                .iter()
                .copied()
                .filter(|s| *s != 3 && *s != 129)
                .collect::<Vec<_>>()),
            saw(&all
                .iter()
                .copied()
                .filter(|s| *s != 3 && *s != 64)
                .collect::<Vec<_>>()),
        );
        // Event 3 missed by both counts once; 64 and 129 once each.
        assert_eq!(events_missed_by_any([&full, &a, &b], 130), 3);
        assert_eq!(events_missed_by_any([&full], 130), 0);
        // Sequence numbers past `published` do not count; nothing seen: every event missed.
        assert_eq!(events_missed_by_any([&a], 100), 1);
        assert_eq!(events_missed_by_any([&SeqTracker::default()], 70), 70);
        assert_eq!(events_missed_by_any(std::iter::empty(), 70), 0);
        assert_eq!(events_missed_by_any([&full], 0), 0);
    }

    #[test]
    fn per_channel_counts_channels_not_only_events() {
        let clean = |n: u64| {
            let mut t = SeqTracker::default();
            (0..n).for_each(|s| t.record(s));
            t
        };
        let mut reordered = SeqTracker::default();
        [0, 2, 1, 3, 5, 4]
            .into_iter()
            .for_each(|s| reordered.record(s));
        let mut lossy = SeqTracker::default();
        [0, 1, 1, 3].into_iter().for_each(|s| lossy.record(s));
        let mut p = PerChannel::new(3);
        p.add(0, &clean(6), 6);
        p.add(0, &reordered, 6);
        p.add(1, &clean(4), 4);
        p.add(1, &lossy, 4);
        p.add(2, &clean(6), 6);
        p.add(7, &clean(6), 6); // no such channel: ignored
        let s = p.summary();
        assert_eq!(
            s,
            ChannelSummary {
                channels: 3,
                with_loss: 1,
                with_duplicates: 1,
                out_of_order: 1,
                worst_out_of_order: Some((0, 2)),
            }
        );
        let t = p.total();
        assert_eq!((t.expected, t.delivered, t.lost), (26, 25, 1));
        assert_eq!((t.duplicates, t.out_of_order), (1, 2));
        assert_eq!(s.to_json()["worst_out_of_order"]["channel"], json!(0));
        assert_eq!(
            PerChannel::new(2).summary().to_json()["worst_out_of_order"],
            Value::Null
        );
    }

    #[test]
    fn sequence_numbers_past_the_published_count_are_unexpected() {
        let mut t = SeqTracker::default();
        for s in 0..10 {
            t.record(s);
        }
        let mut d = Delivery::default();
        d.add(&t, 8);
        assert_eq!((d.delivered, d.lost, d.unexpected), (8, 0, 2));
        assert_eq!(t.delivered_of(64), 10);
        assert_eq!(t.delivered_of(0), 0);
    }

    #[test]
    fn delivery_adds_up_subscribers() {
        let mut full = SeqTracker::default();
        let mut half = SeqTracker::default();
        for s in 0..10 {
            full.record(s);
            if s % 2 == 0 {
                half.record(s);
            }
        }
        let mut d = Delivery::default();
        d.add(&full, 10);
        d.add(&half, 10);
        assert_eq!((d.expected, d.delivered, d.lost), (20, 15, 5));
        assert!((d.loss_ratio() - 0.25).abs() < 1e-9);
    }
}
