//! What one sampling interval of a soak saw, and whether the server drifted: resident memory,
//! open descriptors and CPU per unit of work judged against the first interval after the
//! warm-up. Pure: the numbers come in, the verdict goes out.

use serde_json::{json, Value};

/// Work the loads did (cumulative, or over one interval as the difference of two readings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub churn_cycles: u64,
    pub joins: u64,
    pub published: u64,
    pub api_reads: u64,
    pub delivered: u64,
    pub hostile_frames: u64,
    pub connects: u64,
    pub connect_timeouts: u64,
    /// TCP connects that took a second or more: a SYN the server's host dropped and the client
    /// sent again (the retries come after 1, 3, 7 s).
    pub connects_over_1s: u64,
}

impl Counts {
    /// One unit of work: a churn cycle, a presence join, an API call (publish or read), a
    /// delivery, or a hostile subscribe/unsubscribe frame. The loads are paced, so the mix of
    /// units is the same in every interval and CPU per unit compares across intervals.
    pub fn units(&self) -> u64 {
        self.churn_cycles
            + self.joins
            + self.published
            + self.api_reads
            + self.delivered
            + self.hostile_frames
    }

    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            churn_cycles: self.churn_cycles.saturating_sub(earlier.churn_cycles),
            joins: self.joins.saturating_sub(earlier.joins),
            published: self.published.saturating_sub(earlier.published),
            api_reads: self.api_reads.saturating_sub(earlier.api_reads),
            delivered: self.delivered.saturating_sub(earlier.delivered),
            hostile_frames: self.hostile_frames.saturating_sub(earlier.hostile_frames),
            connects: self.connects.saturating_sub(earlier.connects),
            connect_timeouts: self
                .connect_timeouts
                .saturating_sub(earlier.connect_timeouts),
            connects_over_1s: self
                .connects_over_1s
                .saturating_sub(earlier.connects_over_1s),
        }
    }
}

/// One sampling interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Interval {
    /// Seconds since the load started, at the interval's end.
    pub end_s: f64,
    pub seconds: f64,
    /// Server RSS at the end of the interval and the most seen in it (sampled each second).
    pub rss_kb: u64,
    pub rss_max_kb: u64,
    /// Fewest and most open descriptors seen (each second): the fewest is the floor under the
    /// connections in flight, which only a leak raises.
    pub fds_min: u64,
    pub fds_max: u64,
    pub cpu_s: f64,
    pub work: Counts,
    /// Listen-queue overflows the kernel counted in this network namespace.
    pub listen_overflows: Option<u64>,
    /// TCP connect time of the connections made in the interval.
    pub connect_p999_ms: f64,
    pub connect_max_ms: f64,
    /// How busy the whole machine was (all processes): past ~90% the server had no CPU to
    /// spare, and slow connects say more about the machine than about the server.
    pub machine_busy_pct: Option<f64>,
}

impl Interval {
    /// Server CPU microseconds per unit of work (see [`Counts::units`]).
    pub fn cpu_us_per_unit(&self) -> Option<f64> {
        let units = self.work.units();
        (units > 0).then(|| self.cpu_s * 1e6 / units as f64)
    }

    pub fn to_json(&self) -> Value {
        let r = |v: f64, d: i32| crate::report::round(v, d);
        let per_s = |n: u64| r(n as f64 / self.seconds.max(1e-9), 1);
        let w = &self.work;
        json!({
            "end_s": r(self.end_s, 1),
            "rss_kb": self.rss_kb,
            "rss_max_kb": self.rss_max_kb,
            "fds_min": self.fds_min,
            "fds_max": self.fds_max,
            "cpu_s": r(self.cpu_s, 2),
            "cpu_us_per_unit": self.cpu_us_per_unit().map(|v| r(v, 3)),
            "units_per_s": per_s(w.units()),
            "churn_per_s": per_s(w.churn_cycles),
            "joins_per_s": per_s(w.joins),
            "published_per_s": per_s(w.published),
            "api_reads_per_s": per_s(w.api_reads),
            "delivered_per_s": per_s(w.delivered),
            "hostile_frames_per_s": per_s(w.hostile_frames),
            "connects": w.connects,
            "connect_timeouts": w.connect_timeouts,
            "connects_over_1s": w.connects_over_1s,
            "connect_p99_9_ms": r(self.connect_p999_ms, 3),
            "connect_max_ms": r(self.connect_max_ms, 3),
            "listen_overflows": self.listen_overflows,
            "machine_busy_pct": self.machine_busy_pct.map(|v| r(v, 1)),
        })
    }

    /// One line for people watching the run.
    pub fn line(&self, i: usize, of: usize) -> String {
        let w = &self.work;
        let per_s = |n: u64| n as f64 / self.seconds.max(1e-9);
        format!(
            "soak: interval {}/{} ({:.0} s): rss {} kB (max {}), fds {}-{}, cpu {:.2} s, {} µs/unit; per s: churn {:.0}, joins {:.0}, published {:.0}, api reads {:.0}, delivered {:.0}, hostile frames {:.0}; connects {} (p99.9 {:.1} ms, max {:.1} ms, >=1 s {}, timed out {}); listen overflows {}; machine {}% busy",
            i + 1,
            of,
            self.end_s,
            self.rss_kb,
            self.rss_max_kb,
            self.fds_min,
            self.fds_max,
            self.cpu_s,
            self.cpu_us_per_unit()
                .map_or("-".into(), |v| format!("{v:.2}")),
            per_s(w.churn_cycles),
            per_s(w.joins),
            per_s(w.published),
            per_s(w.api_reads),
            per_s(w.delivered),
            per_s(w.hostile_frames),
            w.connects,
            self.connect_p999_ms,
            self.connect_max_ms,
            w.connects_over_1s,
            w.connect_timeouts,
            self.listen_overflows
                .map_or("-".into(), |n| n.to_string()),
            self.machine_busy_pct
                .map_or("-".into(), |v| format!("{v:.0}")),
        )
    }
}

/// How far each measure may rise over its value in the first interval after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// RSS (the interval's most): the larger of this share and `rss_kb`.
    pub rss_pct: f64,
    pub rss_kb: u64,
    /// Open descriptors (the interval's fewest): the larger of this share and `fds`.
    pub fds_pct: f64,
    pub fds: u64,
    /// CPU per unit of work.
    pub cpu_pct: f64,
}

/// The drift verdict: what rose by how much against what was allowed, and the failures.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    /// Index of the baseline interval; None when the run had no interval after the warm-up.
    pub baseline: Option<usize>,
    pub rss_growth_kb: i64,
    pub rss_allowed_kb: u64,
    pub fds_growth: i64,
    pub fds_allowed: u64,
    pub cpu_growth_pct: f64,
    pub cpu_allowed_pct: f64,
    pub failures: Vec<String>,
}

/// Judges intervals `warmup..` against interval `warmup`, the first after the warm-up. Only a
/// rise counts: memory handed back or a cheaper interval is no drift.
pub fn judge(intervals: &[Interval], warmup: usize, t: &Tolerance) -> Drift {
    let mut d = Drift {
        baseline: None,
        rss_growth_kb: 0,
        rss_allowed_kb: 0,
        fds_growth: 0,
        fds_allowed: 0,
        cpu_growth_pct: 0.0,
        cpu_allowed_pct: t.cpu_pct,
        failures: Vec::new(),
    };
    let Some(base) = intervals.get(warmup) else {
        return d;
    };
    d.baseline = Some(warmup);
    let share = |v: u64, pct: f64| (v as f64 * pct / 100.0).round() as u64;
    d.rss_allowed_kb = share(base.rss_max_kb, t.rss_pct).max(t.rss_kb);
    d.fds_allowed = share(base.fds_min, t.fds_pct).max(t.fds);
    let base_cpu = base.cpu_us_per_unit();
    let mut worst = (None, None, None);
    for (i, iv) in intervals.iter().enumerate().skip(warmup + 1) {
        let rss = iv.rss_max_kb as i64 - base.rss_max_kb as i64;
        if rss > d.rss_growth_kb {
            d.rss_growth_kb = rss;
            worst.0 = Some(i);
        }
        let fds = iv.fds_min as i64 - base.fds_min as i64;
        if fds > d.fds_growth {
            d.fds_growth = fds;
            worst.1 = Some(i);
        }
        if let (Some(b), Some(c)) = (base_cpu, iv.cpu_us_per_unit()) {
            let pct = (c / b - 1.0) * 100.0;
            if pct > d.cpu_growth_pct {
                d.cpu_growth_pct = pct;
                worst.2 = Some(i);
            }
        }
    }
    let at = |i: Option<usize>| i.map_or(0, |i| i + 1);
    if d.rss_growth_kb > d.rss_allowed_kb as i64 {
        d.failures.push(format!(
            "RSS drifted: +{} kB in interval {} over interval {} (allowed +{} kB)",
            d.rss_growth_kb,
            at(worst.0),
            warmup + 1,
            d.rss_allowed_kb
        ));
    }
    if d.fds_growth > d.fds_allowed as i64 {
        d.failures.push(format!(
            "open descriptors drifted: +{} in interval {} over interval {} (allowed +{})",
            d.fds_growth,
            at(worst.1),
            warmup + 1,
            d.fds_allowed
        ));
    }
    if d.cpu_growth_pct > t.cpu_pct {
        d.failures.push(format!(
            "CPU per unit of work drifted: +{:.1}% in interval {} over interval {} (allowed +{}%)",
            d.cpu_growth_pct,
            at(worst.2),
            warmup + 1,
            t.cpu_pct
        ));
    }
    d
}

impl Drift {
    pub fn to_json(&self) -> Value {
        json!({
            "baseline_interval": self.baseline.map(|i| i + 1),
            "rss_growth_kb": self.rss_growth_kb,
            "rss_allowed_kb": self.rss_allowed_kb,
            "fds_growth": self.fds_growth,
            "fds_allowed": self.fds_allowed,
            "cpu_per_unit_growth_pct": crate::report::round(self.cpu_growth_pct, 1),
            "cpu_per_unit_allowed_pct": self.cpu_allowed_pct,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Tolerance = Tolerance {
        rss_pct: 10.0,
        rss_kb: 4096,
        fds_pct: 10.0,
        fds: 32,
        cpu_pct: 25.0,
    };

    fn iv(rss_max_kb: u64, fds_min: u64, cpu_s: f64, units: u64) -> Interval {
        Interval {
            seconds: 60.0,
            rss_kb: rss_max_kb,
            rss_max_kb,
            fds_min,
            fds_max: fds_min + 50,
            cpu_s,
            work: Counts {
                delivered: units,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_flat_run_after_a_warm_up_that_grew_passes() {
        // The warm-up grows (allocator, pools); from interval 3 on it is flat within noise.
        let v = vec![
            iv(10_000, 100, 5.0, 1_000_000),
            iv(30_000, 600, 9.0, 1_000_000),
            iv(50_000, 640, 10.0, 1_000_000),
            iv(51_000, 650, 10.5, 1_000_000),
            iv(49_000, 630, 9.8, 1_000_000),
        ];
        let d = judge(&v, 2, &T);
        assert_eq!(d.baseline, Some(2));
        assert_eq!(d.failures, Vec::<String>::new());
        assert_eq!((d.rss_growth_kb, d.rss_allowed_kb), (1_000, 5_000));
        assert_eq!((d.fds_growth, d.fds_allowed), (10, 64));
        assert!((d.cpu_growth_pct - 5.0).abs() < 1e-9, "{d:?}");
    }

    #[test]
    fn each_kind_of_drift_fails_and_names_the_interval() {
        let base = iv(50_000, 640, 10.0, 1_000_000);
        let v = vec![
            base.clone(),
            iv(56_000, 640, 10.0, 1_000_000),
            iv(50_000, 720, 10.0, 1_000_000),
            iv(50_000, 640, 13.0, 1_000_000),
        ];
        let d = judge(&v, 0, &T);
        assert_eq!(d.failures.len(), 3, "{d:?}");
        assert_eq!(
            d.failures[0],
            "RSS drifted: +6000 kB in interval 2 over interval 1 (allowed +5000 kB)"
        );
        assert_eq!(
            d.failures[1],
            "open descriptors drifted: +80 in interval 3 over interval 1 (allowed +64)"
        );
        assert_eq!(
            d.failures[2],
            "CPU per unit of work drifted: +30.0% in interval 4 over interval 1 (allowed +25%)"
        );
        // A fall is no drift.
        let d = judge(&[base.clone(), iv(20_000, 100, 1.0, 1_000_000)], 0, &T);
        assert!(d.failures.is_empty(), "{d:?}");
        // The absolute floor applies to small servers: +4 MiB on 10 MB is allowed.
        let d = judge(&[iv(10_000, 40, 1.0, 10), iv(14_000, 72, 1.0, 10)], 0, &T);
        assert!(d.failures.is_empty(), "{d:?}");
    }

    #[test]
    fn nothing_is_judged_without_an_interval_after_the_warm_up() {
        let v = vec![iv(1, 1, 1.0, 1), iv(100_000, 1_000, 100.0, 1)];
        let d = judge(&v, 2, &T);
        assert_eq!(d.baseline, None);
        assert!(d.failures.is_empty());
        assert_eq!(d.to_json()["baseline_interval"], Value::Null);
    }

    #[test]
    fn units_and_differences() {
        let a = Counts {
            churn_cycles: 10,
            joins: 5,
            published: 3,
            api_reads: 2,
            delivered: 100,
            hostile_frames: 7,
            connects: 15,
            connect_timeouts: 1,
            connects_over_1s: 2,
        };
        assert_eq!(a.units(), 127);
        let b = a.since(&Counts {
            delivered: 40,
            connects: 5,
            ..Default::default()
        });
        assert_eq!((b.delivered, b.connects, b.units()), (60, 10, 87));
        let i = Interval {
            cpu_s: 0.127,
            work: a,
            seconds: 1.0,
            ..Default::default()
        };
        assert!((i.cpu_us_per_unit().unwrap() - 1000.0).abs() < 1e-9);
        assert_eq!(Interval::default().cpu_us_per_unit(), None);
        assert!(i.line(0, 3).starts_with("soak: interval 1/3"));
    }
}
