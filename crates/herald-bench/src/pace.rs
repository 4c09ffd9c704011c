//! Waiting until an instant with microsecond precision. The runtime's timers tick in whole
//! milliseconds (a park rounds its timeout up), so a rate of 1,000 events/s paced by them comes
//! out bunched: in one measurement a tenth of the gaps between events were under 0.12 ms and a
//! quarter under 0.5 ms, and every event that lands right behind another waits for the server to
//! finish the first. One OS thread keeps the deadlines instead, sleeping on a futex with a
//! nanosecond timeout, and wakes each waiting task through its runtime when its time comes.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::Instant;
use tokio::sync::oneshot;

type Request = (Instant, u64, oneshot::Sender<()>);

fn clock() -> &'static mpsc::Sender<Request> {
    static CLOCK: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    CLOCK.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        // Lives as long as the process; if it cannot start, waits fall back to the runtime.
        let _ = std::thread::Builder::new()
            .name("pace-clock".into())
            .spawn(move || keep_time(rx));
        tx
    })
}

fn keep_time(rx: mpsc::Receiver<Request>) {
    // The kernel may add this much to each sleep to batch wake-ups (50 µs by default).
    let _ = nix::sys::prctl::set_timerslack(1_000);
    // Keyed by deadline, then by request number (two waits may share a deadline).
    let mut due: BTreeMap<(Instant, u64), oneshot::Sender<()>> = BTreeMap::new();
    loop {
        let now = Instant::now();
        while let Some(entry) = due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let _ = entry.remove().send(());
        }
        let next = match due.first_key_value() {
            Some((&(at, _), _)) => rx.recv_timeout(at.saturating_duration_since(now)),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match next {
            Ok((at, id, tx)) => {
                due.insert((at, id), tx);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Waits until `at`, to within some microseconds of it (never before it).
pub async fn sleep_until(at: tokio::time::Instant) {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let at_std = at.into_std();
    if at_std <= Instant::now() {
        return;
    }
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    if clock().send((at_std, id, tx)).is_err() || rx.await.is_err() {
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[tokio::test(flavor = "current_thread")]
    async fn never_wakes_before_the_deadline() {
        let start = tokio::time::Instant::now();
        // Deadlines 0.3 ms apart, closer than the runtime's own timers can tell apart.
        for i in 1..=20u32 {
            let at = start + Duration::from_micros(300) * i;
            sleep_until(at).await;
            assert!(
                tokio::time::Instant::now() >= at,
                "woke before deadline {i}"
            );
        }
        // A deadline already passed does not wait.
        sleep_until(start).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_waits_end_in_deadline_order() {
        let start = tokio::time::Instant::now();
        let order = Arc::new(Mutex::new(Vec::new()));
        // Started latest deadline first. The first deadline is far enough ahead that every wait
        // is registered before it passes even on a loaded machine (a deadline already passed
        // returns at once, in spawn order, which would test nothing about the clock).
        let waits: Vec<_> = (0..8u64)
            .rev()
            .map(|i| {
                let order = order.clone();
                tokio::spawn(async move {
                    sleep_until(start + Duration::from_millis(200 + 2 * i)).await;
                    order.lock().unwrap().push(i);
                })
            })
            .collect();
        for w in waits {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (0..8).collect::<Vec<_>>());
    }
}
