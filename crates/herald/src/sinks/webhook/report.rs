//! Log lines about webhook trouble, throttled: the first occurrence of a kind is logged at once,
//! then at most one line per [`REPORT_INTERVAL`] carrying the count since the last line. A
//! burst of thousands of drops or failures makes a few lines, not thousands; the metrics count
//! every one.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// At most one log line of each kind (dropped, retried, given up) per target, and per app for
/// the dispatcher's own queue, per this interval; each line says how many it stands for.
pub(super) const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Counts occurrences of one kind of trouble and says when to log them: the first at once,
/// then at most one line per [`REPORT_INTERVAL`] carrying the count since the last line.
#[derive(Debug, Default)]
pub(super) struct Throttle {
    unreported: u64,
    pub(super) last_reason: String,
    last_report: Option<Instant>,
}

impl Throttle {
    /// Notes one occurrence; returns the count to log now, if a line is due.
    pub(super) fn note(&mut self, now: Instant, reason: &str) -> Option<u64> {
        self.unreported += 1;
        if self.last_reason != reason {
            reason.clone_into(&mut self.last_reason);
        }
        self.take(now)
    }

    /// The count to log now, if there is one and the interval since the last line is over.
    pub(super) fn take(&mut self, now: Instant) -> Option<u64> {
        if self.unreported == 0
            || self
                .last_report
                .is_some_and(|t| now.duration_since(t) < REPORT_INTERVAL)
        {
            return None;
        }
        self.last_report = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }

    /// When the count not logged yet may be.
    pub(super) fn due(&self) -> Option<Instant> {
        (self.unreported > 0).then(|| {
            self.last_report
                .map_or_else(Instant::now, |t| t + REPORT_INTERVAL)
        })
    }

    /// The count not logged yet, interval or not (shutdown).
    pub(super) fn take_rest(&mut self) -> Option<u64> {
        (self.unreported > 0).then(|| std::mem::take(&mut self.unreported))
    }
}

/// What a target's log lines are about.
#[derive(Debug, Clone, Copy)]
pub(super) enum Report {
    Dropped,
    Retried,
    GaveUp,
}

/// One target's throttled log lines.
#[derive(Debug)]
pub(super) struct TargetReports {
    app_id: String,
    /// The URL as logs show it (redacted).
    shown_url: String,
    capacity: usize,
    /// Dropped, retried, given up.
    kinds: Mutex<[Throttle; 3]>,
}

impl TargetReports {
    pub(super) fn new(app_id: &str, shown_url: &str, capacity: usize) -> Self {
        Self {
            app_id: app_id.to_owned(),
            shown_url: shown_url.to_owned(),
            capacity,
            kinds: Mutex::new(Default::default()),
        }
    }

    /// Notes one occurrence of `r` and logs it if a line is due.
    pub(super) fn note(&self, r: Report, reason: &str) {
        let n = self.kinds.lock()[r as usize].note(Instant::now(), reason);
        if let Some(n) = n {
            self.log(r, n, reason);
        }
    }

    /// Logs the counts whose interval is over (all of them with `all`, at shutdown).
    pub(super) fn flush(&self, all: bool) {
        for r in [Report::Dropped, Report::Retried, Report::GaveUp] {
            let (n, reason) = {
                let mut kinds = self.kinds.lock();
                let t = &mut kinds[r as usize];
                let n = if all {
                    t.take_rest()
                } else {
                    t.take(Instant::now())
                };
                (n, t.last_reason.clone())
            };
            if let Some(n) = n {
                self.log(r, n, &reason);
            }
        }
    }

    /// When a count not logged yet may be.
    pub(super) fn due(&self) -> Option<Instant> {
        self.kinds.lock().iter().filter_map(Throttle::due).min()
    }

    fn log(&self, r: Report, n: u64, reason: &str) {
        let (app, url, capacity) = (&self.app_id, &self.shown_url, self.capacity);
        match r {
            Report::Dropped => tracing::warn!(
                app = %app, url = %url, capacity, dropped = n,
                "webhook queue full: {n} webhook(s) dropped since the last report"
            ),
            Report::Retried => tracing::info!(
                app = %app, url = %url, failed_attempts = n, last_reason = %reason,
                "{n} webhook attempt(s) failed since the last report; retrying"
            ),
            Report::GaveUp => tracing::warn!(
                app = %app, url = %url, given_up = n, last_reason = %reason,
                "{n} webhook(s) given up since the last report"
            ),
        }
    }
}

/// Events an app's dispatcher could not take (its queue was full, or shutdown had begun), per
/// app, not yet logged.
#[derive(Debug, Default)]
pub(super) struct EventDrops(Mutex<HashMap<String, Throttle>>);

impl EventDrops {
    /// Notes one dropped event of `app` and logs the count if a line is due.
    pub(super) fn note(&self, app: &str, reason: &str) {
        let n = self
            .0
            .lock()
            .entry(app.to_owned())
            .or_default()
            .note(Instant::now(), reason);
        if let Some(n) = n {
            log_event_drops(app, n, reason);
        }
    }

    /// When a count of `app` not logged yet may be.
    pub(super) fn due(&self, app: &str) -> Option<Instant> {
        self.0.lock().get(app).and_then(Throttle::due)
    }

    /// Logs the count of `app` if its interval is over (whatever it is with `all`).
    pub(super) fn flush(&self, app: &str, all: bool) {
        let (n, reason) = {
            let mut drops = self.0.lock();
            let Some(t) = drops.get_mut(app) else {
                return;
            };
            let n = if all {
                t.take_rest()
            } else {
                t.take(Instant::now())
            };
            (n, t.last_reason.clone())
        };
        if let Some(n) = n {
            log_event_drops(app, n, &reason);
        }
    }

    /// Logs every count not logged yet (shutdown).
    pub(super) fn flush_all(&self) {
        let apps: Vec<String> = self.0.lock().keys().cloned().collect();
        for app in apps {
            self.flush(&app, true);
        }
    }
}

fn log_event_drops(app: &str, n: u64, reason: &str) {
    tracing::warn!(app = %app, dropped = n, reason = %reason, "{n} webhook event(s) dropped since the last report");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_logs_the_first_at_once_then_one_count_per_interval() {
        let t0 = Instant::now();
        let mut t = Throttle::default();
        assert_eq!(t.due(), None);
        assert_eq!(t.note(t0, "full"), Some(1), "the first at once");
        for _ in 0..999 {
            assert_eq!(t.note(t0 + Duration::from_secs(1), "full"), None);
        }
        assert_eq!(t.due(), Some(t0 + REPORT_INTERVAL));
        assert_eq!(
            t.take(t0 + REPORT_INTERVAL - Duration::from_millis(1)),
            None
        );
        assert_eq!(
            t.take(t0 + REPORT_INTERVAL),
            Some(999),
            "the count since the last line"
        );
        assert_eq!(t.due(), None);
        assert_eq!(t.note(t0 + REPORT_INTERVAL * 2, "other"), Some(1));
        assert_eq!(t.last_reason, "other");
        t.note(t0 + REPORT_INTERVAL * 2, "other");
        assert_eq!(t.take_rest(), Some(1), "shutdown logs what is left");
        assert_eq!(t.take_rest(), None);
    }

    #[tokio::test]
    async fn reports_keep_their_kinds_apart() {
        let r = TargetReports::new("app", "http://h/x", 5);
        r.note(Report::Dropped, "full");
        r.note(Report::Dropped, "full");
        r.note(Report::GaveUp, "window");
        let due = r.due().expect("one dropped webhook not logged yet");
        assert!(
            due > Instant::now() + REPORT_INTERVAL / 2,
            "after the interval"
        );
        let kinds = r.kinds.lock();
        let pending: Vec<u64> = kinds.iter().map(|t| t.unreported).collect();
        assert_eq!(
            pending,
            [1, 0, 0],
            "the first of each kind was logged at once"
        );
    }
}
