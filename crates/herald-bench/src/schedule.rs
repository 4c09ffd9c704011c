//! Paced runs: the schedule senders follow, how far behind it they fell, and when a run that did
//! not keep it fails. Latency at a rate is measured from each event's scheduled instant, not from
//! when its sender got round to it: a sender that wakes late, or is still busy with an earlier
//! request, would otherwise hide that wait from the latency (coordinated omission).
//!
//! The default bound on the send lag's p99 (`--max-lag-p99-ms`, 5 ms) comes from 81 runs on
//! this 2-core virtual machine at 1,000 events/s for 3 s (fanout: 1,000 subscribers over 100
//! channels; floor: 1,000 receivers, and echoed), between 04:00 and 05:30 UTC. In the 24 runs
//! with nothing else running (`other_cpu_s` at most 0.3 s) the lag p99 was 0.17-0.70 ms in a
//! fast quarter hour (one fanout run 2.35 ms) and 1.0-3.3 ms in a slow one (one 5.1 ms, beside
//! 0.23 s of other work); p50 0.07-0.08 ms throughout. Even the bare relay's echo, no server
//! involved, saw 1.0-1.8 ms in the slow one: that much is this machine's own jitter in waking a
//! nice-19 thread, and a bound under it (1 ms) would fail most quiet runs there and reward
//! re-running until one passes. With two CPU hogs every run was at 62-3,256 ms; beside other
//! builds and tests 0.1-87 ms, 20 of 49 over 5 ms. A run under the bound still counts its lag
//! in its latency.

use crate::stats::{Latency, LatencySummary};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::Instant;

/// How long after the end of its schedule a sender that fell behind may go on sending the events
/// it still owes. What it has not sent by then counts as not sent (and the run, being short of
/// its rate, fails); what it sends in that time counts, with its lag and its latency.
pub const OVERRUN: Duration = Duration::from_secs(1);

/// Bounds a paced run must keep to count as clean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Most the 99th percentile of the send lag may be, in milliseconds.
    pub max_lag_p99_ms: f64,
    /// Least share of the requested rate that must be achieved, in percent.
    pub min_rate_pct: f64,
}

/// One schedule over S senders: sender k of S sends its n-th event at
/// `start + period * k / S + period * n`, where `period = S / rate`, so the senders take turns and
/// the events of all of them come evenly spaced. Slots at or past `start + length` are not in it.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start: Instant,
    period_ns: u128,
    senders: u128,
    length_ns: u128,
}

impl Schedule {
    /// `rate` events per second over all `senders`, for `length`.
    pub fn new(start: Instant, rate: f64, senders: u64, length: Duration) -> Self {
        let senders = senders.max(1);
        Self {
            start,
            period_ns: Duration::from_secs_f64(senders as f64 / rate)
                .as_nanos()
                .max(1),
            senders: u128::from(senders),
            length_ns: length.as_nanos(),
        }
    }

    fn offset_ns(&self, sender: u64, n: u64) -> u128 {
        self.period_ns * u128::from(sender) / self.senders + self.period_ns * u128::from(n)
    }

    /// The n-th slot of `sender`, or None once the schedule is over.
    pub fn slot(&self, sender: u64, n: u64) -> Option<Instant> {
        let off = self.offset_ns(sender, n);
        (off < self.length_ns).then(|| self.start + Duration::from_nanos(off as u64))
    }

    /// How many slots the whole schedule holds: `ceil(rate * length)`.
    pub fn slots(&self) -> u64 {
        (0..self.senders as u64)
            .map(|k| {
                let first = self.offset_ns(k, 0);
                if first >= self.length_ns {
                    0
                } else {
                    (self.length_ns - first).div_ceil(self.period_ns) as u64
                }
            })
            .sum()
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn end(&self) -> Instant {
        self.start + Duration::from_nanos(self.length_ns as u64)
    }

    /// When a sender that fell behind gives up on the rest (see [`OVERRUN`]).
    pub fn give_up(&self) -> Instant {
        self.end() + OVERRUN
    }
}

/// Taken as an event of slot `at` is about to be sent: its scheduled instant as µs since the
/// Unix epoch (the clock receivers compare against) and how late the send is, in µs. The wall
/// time is read now and the lag subtracted from it (both clocks read at the same moment), so a
/// step of the wall clock earlier in the run does not move the scheduled time.
pub fn stamp(at: Instant) -> (u64, u64) {
    let now = Instant::now();
    let wall = crate::scenario::now_us();
    let lag = now.saturating_duration_since(at).as_micros() as u64;
    (wall.saturating_sub(lag), lag)
}

/// What one sender (or all of them, merged) did with its schedule.
#[derive(Debug, Clone, Default)]
pub struct Kept {
    /// Send lag of each event sent: send instant − scheduled instant, µs (0 allowed).
    pub lag: Latency,
    pub sent: u64,
    /// The latest send, as time since the schedule's start.
    pub last_send: Duration,
}

impl Kept {
    /// Counts one send, `lag_us` behind its slot, at `now`.
    pub fn record(&mut self, schedule: &Schedule, lag_us: u64, now: Instant) {
        self.lag.record_zero_us(lag_us);
        self.sent += 1;
        self.last_send = self
            .last_send
            .max(now.saturating_duration_since(schedule.start()));
    }

    pub fn merge(&mut self, other: &Kept) {
        self.lag.merge(&other.lag);
        self.sent += other.sent;
        self.last_send = self.last_send.max(other.last_send);
    }
}

/// How a paced run kept its schedule, for the report and the pass/fail decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub requested_per_s: f64,
    /// The schedule's length, seconds.
    pub length_s: f64,
    /// Slots in the schedule (capped by a `--max-*` count).
    pub scheduled: u64,
    pub sent: u64,
    /// The latest send, seconds after the schedule's start.
    pub last_send_s: f64,
    pub lag: LatencySummary,
}

impl Outcome {
    pub fn new(schedule: &Schedule, rate: f64, cap: u64, kept: &Kept) -> Self {
        Self {
            requested_per_s: rate,
            length_s: schedule.length_ns as f64 / 1e9,
            scheduled: schedule.slots().min(cap),
            sent: kept.sent,
            last_send_s: kept.last_send.as_secs_f64(),
            lag: kept.lag.summary(),
        }
    }

    /// Events sent over the time they took: the schedule's length, or longer when the last of
    /// them went out after its end. A count cap (`--max-events`) shortens the schedule.
    pub fn achieved_per_s(&self) -> f64 {
        let capped_s = if self.requested_per_s > 0.0 {
            self.length_s
                .min(self.scheduled as f64 / self.requested_per_s)
        } else {
            self.length_s
        };
        self.sent as f64 / capped_s.max(self.last_send_s).max(1e-9)
    }

    /// Achieved rate as a share of the requested one, percent.
    pub fn achieved_pct(&self) -> f64 {
        100.0 * self.achieved_per_s() / self.requested_per_s.max(1e-9)
    }

    /// Why the run does not count as clean, if it does not.
    pub fn failures(&self, limits: &Limits) -> Vec<String> {
        let mut out = Vec::new();
        if self.achieved_pct() < limits.min_rate_pct {
            out.push(format!(
                "schedule not kept: achieved {:.1}/s, {:.1}% of the requested {}/s (under {}%; {} of {} events sent)",
                self.achieved_per_s(),
                self.achieved_pct(),
                self.requested_per_s,
                limits.min_rate_pct,
                self.sent,
                self.scheduled
            ));
        }
        if self.lag.p99_ms > limits.max_lag_p99_ms {
            out.push(format!(
                "schedule not kept: send lag p99 {:.3} ms over the bound of {} ms (p50 {:.3}, max {:.3})",
                self.lag.p99_ms, limits.max_lag_p99_ms, self.lag.p50_ms, self.lag.max_ms
            ));
        }
        out
    }

    pub fn to_json(self, limits: &Limits) -> Value {
        let r = |v: f64| crate::report::round(v, 1);
        // Named so that, in key order, each figure sits next to its bound.
        json!({
            "rate_requested_per_s": self.requested_per_s,
            "rate_achieved_per_s": r(self.achieved_per_s()),
            "rate_achieved_pct": r(self.achieved_pct()),
            "rate_min_pct": limits.min_rate_pct,
            "events_scheduled": self.scheduled,
            "events_sent": self.sent,
            "last_send_s": crate::report::round(self.last_send_s, 3),
            "lag": self.lag.to_json(),
            "lag_p99_bound_ms": limits.max_lag_p99_ms,
        })
    }
}

/// Adds a paced run's schedule to the report (results `schedule`, the bounds as parameters) and
/// fails the run when it was not kept.
pub fn put(r: &mut crate::report::Report, outcome: &Outcome, limits: &Limits) {
    r.param("max_lag_p99_ms", limits.max_lag_p99_ms);
    r.param("min_rate_pct", limits.min_rate_pct);
    r.result("schedule", outcome.to_json(limits));
    for f in outcome.failures(limits) {
        r.fail(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_lag_p99_ms: 1.0,
        min_rate_pct: 99.0,
    };

    fn all_slots(s: &Schedule, senders: u64) -> Vec<Instant> {
        let mut v: Vec<Instant> = (0..senders)
            .flat_map(|k| (0..).map_while(move |n| s.slot(k, n)))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn slots_are_evenly_spaced_and_counted() {
        let start = Instant::now();
        let s = Schedule::new(start, 1000.0, 4, Duration::from_secs(3));
        assert_eq!(s.slots(), 3000);
        let v = all_slots(&s, 4);
        assert_eq!(v.len(), 3000);
        for w in v.windows(2) {
            assert_eq!(w[1] - w[0], Duration::from_millis(1));
        }
        assert_eq!(v[0], start);
        assert!(*v.last().unwrap() < s.end());
        // A length that is no whole number of periods: ceil(rate * length), counted as sent.
        for (rate, senders, ms) in [(200.0, 4, 1010), (333.0, 3, 2500), (1000.0, 7, 5)] {
            let s = Schedule::new(start, rate, senders, Duration::from_millis(ms));
            let want = (rate * ms as f64 / 1000.0).ceil() as u64;
            assert_eq!(s.slots(), want, "{rate} {senders} {ms}");
            assert_eq!(all_slots(&s, senders).len() as u64, want);
        }
    }

    fn kept(lags_us: &[u64], last_send: Duration) -> Kept {
        let mut k = Kept::default();
        for &l in lags_us {
            k.lag.record_zero_us(l);
            k.sent += 1;
        }
        k.last_send = last_send;
        k
    }

    fn outcome(lags_us: &[u64], last_send_ms: u64, cap: u64) -> Outcome {
        let s = Schedule::new(Instant::now(), 1000.0, 4, Duration::from_secs(3));
        Outcome::new(
            &s,
            1000.0,
            cap,
            &kept(lags_us, Duration::from_millis(last_send_ms)),
        )
    }

    #[test]
    fn a_kept_schedule_passes() {
        // 3,000 events, 20 to 80 µs late, the last one 1 ms before the end.
        let lags: Vec<u64> = (0..3000).map(|i| 20 + i % 61).collect();
        let o = outcome(&lags, 2999, u64::MAX);
        assert_eq!((o.scheduled, o.sent), (3000, 3000));
        assert!((o.achieved_per_s() - 1000.0).abs() < 1e-9);
        assert!(o.lag.p50_ms > 0.04 && o.lag.p50_ms < 0.06, "{:?}", o.lag);
        assert_eq!(o.failures(&LIMITS), Vec::<String>::new());
    }

    #[test]
    fn lag_statistics_keep_zero_and_the_tail() {
        let mut lags = vec![0u64; 980];
        lags.extend([5_000; 20]);
        let o = outcome(&lags, 999, 1000);
        assert_eq!(o.lag.p50_ms, 0.0);
        assert!((o.lag.p99_ms - 5.0).abs() < 0.01, "{:?}", o.lag);
        assert!((o.lag.max_ms - 5.0).abs() < 0.01, "{:?}", o.lag);
        let f = o.failures(&LIMITS);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains("send lag p99 5.00"), "{f:?}");
        // The bound is a flag: a looser one passes the same run.
        let looser = Limits {
            max_lag_p99_ms: 5.1,
            ..LIMITS
        };
        assert!(o.failures(&looser).is_empty());
    }

    #[test]
    fn short_of_the_rate_fails() {
        // The reviewer's run: 2,810 of 3,000 events sent in 3 s.
        let o = outcome(&vec![10; 2810], 2999, u64::MAX);
        assert!((o.achieved_per_s() - 936.7).abs() < 0.1);
        let f = o.failures(&LIMITS);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].contains("achieved 936.7/s") && f[0].contains("2810 of 3000"),
            "{f:?}"
        );
        // 99% exactly passes, one event fewer does not.
        assert!(outcome(&vec![10; 2970], 2999, u64::MAX)
            .failures(&LIMITS)
            .is_empty());
        assert_eq!(
            outcome(&vec![10; 2969], 2999, u64::MAX)
                .failures(&LIMITS)
                .len(),
            1
        );
    }

    #[test]
    fn sending_late_past_the_end_counts_against_the_rate() {
        // Every event sent, but the last 100 ms after the schedule's end: 3000 / 3.1 s.
        let o = outcome(&vec![10; 3000], 3100, u64::MAX);
        assert!((o.achieved_per_s() - 3000.0 / 3.1).abs() < 1e-6);
        assert_eq!(o.failures(&LIMITS).len(), 1);
        // 20 ms late at the end is within 1%.
        assert!(outcome(&vec![10; 3000], 3020, u64::MAX)
            .failures(&LIMITS)
            .is_empty());
    }

    #[test]
    fn a_count_cap_shortens_the_schedule() {
        // --max-events 500 at 1,000/s: half a second's worth, all sent in time.
        let o = outcome(&vec![10; 500], 499, 500);
        assert_eq!(o.scheduled, 500);
        assert!((o.achieved_per_s() - 1000.0).abs() < 1e-9);
        assert!(o.failures(&LIMITS).is_empty());
    }

    #[test]
    fn both_failures_reported_and_in_the_json() {
        let o = outcome(&vec![3_000; 1500], 2999, u64::MAX);
        assert_eq!(o.failures(&LIMITS).len(), 2);
        let mut r = crate::report::Report::new("x");
        put(&mut r, &o, &LIMITS);
        assert!(!r.passed());
        let j: Value = serde_json::from_str(&r.to_json()).unwrap();
        let s = &j["results"]["schedule"];
        assert_eq!(s["rate_requested_per_s"], 1000.0);
        assert_eq!(s["rate_achieved_per_s"], 500.0);
        assert_eq!(s["events_sent"], 1500);
        assert!(
            (s["lag"]["p99_ms"].as_f64().unwrap() - 3.0).abs() < 0.01,
            "{s}"
        );
        assert_eq!(s["lag_p99_bound_ms"], 1.0);
        assert_eq!(j["params"]["max_lag_p99_ms"], 1.0);
        assert_eq!(j["failures"].as_array().unwrap().len(), 2);
        let t = r.table();
        assert!(t.contains("schedule.lag (ms)"), "{t}");
        assert!(
            t.lines()
                .any(|l| l.contains("schedule.rate_achieved_per_s") && l.ends_with(" 500.0")),
            "{t}"
        );
    }

    #[test]
    fn stamp_subtracts_the_lag_from_the_wall_clock() {
        let made = Instant::now();
        let at = made - Duration::from_millis(3);
        let before = crate::scenario::now_us();
        let (sched, lag) = stamp(at);
        let after = crate::scenario::now_us();
        let waited = made.elapsed().as_micros() as u64;
        assert!(lag >= 3_000 && lag <= 3_000 + waited, "{lag} {waited}");
        assert!(
            sched + lag >= before && sched + lag <= after,
            "{sched} {lag}"
        );
        // A slot still ahead is no lag at all.
        let (_, lag) = stamp(Instant::now() + Duration::from_secs(1));
        assert_eq!(lag, 0);
    }

    #[test]
    fn kept_merges_senders() {
        let s = Schedule::new(Instant::now(), 1000.0, 2, Duration::from_secs(1));
        let mut a = Kept::default();
        a.record(&s, 5, s.start() + Duration::from_millis(10));
        let mut b = Kept::default();
        b.record(&s, 7, s.start() + Duration::from_millis(20));
        b.record(&s, 0, s.start() + Duration::from_millis(5));
        a.merge(&b);
        assert_eq!(a.sent, 3);
        assert_eq!(a.last_send, Duration::from_millis(20));
        assert_eq!(a.lag.summary().count, 3);
    }
}
