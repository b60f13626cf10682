//! Log lines that hostile input can drive (refused tokens, poison records, bad requests)
//! are rate-limited: per kind of line, the first `lines_per_window` of a window are
//! written as usual, the rest only counted, and when the window ends one summary line
//! says how many were left out ("… : N more like this in the last 10 s"). The metrics
//! those events count stay exact; only the log is thinned.
//!
//! [`LogLimiter`] is the pure state machine (time is an argument); [`LogLimit`] is the
//! shared handle a stage's metrics hold: it writes the summaries, counts suppressed
//! lines, and runs at most one flusher task at a time, so a summary is written when its
//! window ends even if no further event comes.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, Registry};
use serde::{Deserialize, Serialize};
use tracing::Level;

use crate::InvalidSetting;

/// A kind of rate-limited line: the emit site and its bounded reason. Implemented by
/// small enums of each stage, so the set of keys, and with it the limiter's memory, is
/// fixed by the code, never by input.
pub trait LogLine: Copy + Eq + Hash + Send + 'static {
    /// The line's message; its summary repeats it.
    fn message(self) -> &'static str;
    /// What tells lines of one site apart (the `reason` field of line and summary).
    fn reason(self) -> &'static str;
    /// The level of the line and of its summary.
    fn level(self) -> Level;
}

/// How much of a flood is written: the `[log]` config section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogLimits {
    /// Lines of one kind written per window; the rest are summarized.
    pub lines_per_window: u32,
    /// The window, in seconds.
    pub window_seconds: u64,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            lines_per_window: 10,
            window_seconds: 10,
        }
    }
}

impl LogLimits {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        crate::require_positive(&[("window_seconds", self.window_seconds)])
    }

    fn window(&self) -> Duration {
        Duration::from_secs(self.window_seconds)
    }
}

/// Lines of one kind left out of a window that has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary<K> {
    pub line: K,
    pub suppressed: u64,
    pub window: Duration,
}

/// What to do with one event's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission<K> {
    /// Write the line (else it is suppressed, and counted in a later summary).
    pub write: bool,
    /// Windows that ended before this event: write their summaries first.
    pub summaries: Vec<Summary<K>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    written: u32,
    suppressed: u64,
}

/// The rate limiter's state: one window per kind of line seen in the last window.
#[derive(Debug)]
pub struct LogLimiter<K> {
    limits: LogLimits,
    windows: HashMap<K, Window>,
}

impl<K: LogLine> LogLimiter<K> {
    pub fn new(limits: LogLimits) -> Self {
        Self {
            limits,
            windows: HashMap::new(),
        }
    }

    /// New limits; windows already open keep their counts.
    pub fn set_limits(&mut self, limits: LogLimits) {
        self.limits = limits;
    }

    /// One event of `line` at `now`.
    pub fn admit(&mut self, line: K, now: Instant) -> Admission<K> {
        let summaries = self.flush(now);
        let window = self.windows.entry(line).or_insert(Window {
            started: now,
            written: 0,
            suppressed: 0,
        });
        let write = window.written < self.limits.lines_per_window;
        if write {
            window.written += 1;
        } else {
            window.suppressed += 1;
        }
        Admission { write, summaries }
    }

    /// Ends every window that is over at `now`: the summaries of those that suppressed
    /// lines. A kind of line with no open window costs no memory.
    pub fn flush(&mut self, now: Instant) -> Vec<Summary<K>> {
        let window_length = self.limits.window();
        let mut summaries = Vec::new();
        self.windows.retain(|line, window| {
            let over = now.saturating_duration_since(window.started) >= window_length;
            if over && window.suppressed > 0 {
                summaries.push(Summary {
                    line: *line,
                    suppressed: window.suppressed,
                    window: window_length,
                });
            }
            !over
        });
        summaries
    }

    /// When the first window with suppressed lines ends: the next summary is due then.
    pub fn next_summary_at(&self) -> Option<Instant> {
        let window_length = self.limits.window();
        self.windows
            .values()
            .filter(|window| window.suppressed > 0)
            .map(|window| window.started + window_length)
            .min()
    }

    /// Kinds of line with an open window.
    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }
}

struct Shared<K> {
    state: Mutex<Flushing<K>>,
    suppressed: IntCounter,
}

struct Flushing<K> {
    limiter: LogLimiter<K>,
    /// A flusher task is waiting for the next summary (at most one per limiter).
    flusher: bool,
}

/// A stage's rate limiter for its flood-prone log lines, shared by its clones.
pub struct LogLimit<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for LogLimit<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K: LogLine> LogLimit<K> {
    /// Registers `fanout_<stage>_suppressed_log_lines_total`; default [`LogLimits`].
    pub fn new(registry: &Registry, stage: &str) -> prometheus::Result<Self> {
        let suppressed = IntCounter::new(
            format!("fanout_{stage}_suppressed_log_lines_total"),
            "Log lines left out by the flood limit (each summarized in a later line)",
        )?;
        registry.register(Box::new(suppressed.clone()))?;
        Ok(Self {
            shared: Arc::new(Shared {
                state: Mutex::new(Flushing {
                    limiter: LogLimiter::new(LogLimits::default()),
                    flusher: false,
                }),
                suppressed,
            }),
        })
    }

    /// Applies the configured limits (the stage's metrics are built before its config
    /// is read into them).
    pub fn set_limits(&self, limits: LogLimits) {
        self.lock().limiter.set_limits(limits);
    }

    /// One event of `line`: whether the caller writes its line now. Summaries that are
    /// due are written here; a suppressed line is counted.
    pub fn admit(&self, line: K) -> bool {
        let (admission, start_flusher) = {
            let mut state = self.lock();
            let admission = state.limiter.admit(line, Instant::now());
            // Without a runtime (a unit test), the summary comes with the next event.
            let start_flusher =
                !admission.write && !state.flusher && tokio::runtime::Handle::try_current().is_ok();
            if start_flusher {
                state.flusher = true;
            }
            (admission, start_flusher)
        };
        for summary in &admission.summaries {
            write_summary(summary);
        }
        if !admission.write {
            self.shared.suppressed.inc();
        }
        if start_flusher {
            tokio::spawn(flush_when_due(self.clone()));
        }
        admission.write
    }

    /// Lines suppressed so far.
    pub fn suppressed_count(&self) -> u64 {
        self.shared.suppressed.get()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Flushing<K>> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The flusher: sleeps until the next summary is due, writes it, and ends once no
/// window holds suppressed lines (the next suppression starts another).
async fn flush_when_due<K: LogLine>(limit: LogLimit<K>) {
    loop {
        let due = {
            let mut state = limit.lock();
            let due = state.limiter.next_summary_at();
            if due.is_none() {
                state.flusher = false;
            }
            due
        };
        let Some(due) = due else { return };
        tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
        let summaries = limit.lock().limiter.flush(Instant::now());
        for summary in &summaries {
            write_summary(summary);
        }
    }
}

/// The one place a summary line is written.
fn write_summary<K: LogLine>(summary: &Summary<K>) {
    let message = summary.line.message();
    let reason = summary.line.reason();
    let suppressed = summary.suppressed;
    let window_seconds = summary.window.as_secs();
    macro_rules! summary_at {
        ($level:expr) => {
            tracing::event!(
                $level,
                reason,
                suppressed,
                window_seconds,
                "{message}: {suppressed} more like this in the last {window_seconds} s"
            )
        };
    }
    match summary.line.level() {
        Level::ERROR => summary_at!(Level::ERROR),
        Level::WARN => summary_at!(Level::WARN),
        Level::INFO => summary_at!(Level::INFO),
        Level::DEBUG => summary_at!(Level::DEBUG),
        _ => summary_at!(Level::TRACE),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    enum Line {
        Refused,
        Poison,
    }

    impl LogLine for Line {
        fn message(self) -> &'static str {
            "test line"
        }
        fn reason(self) -> &'static str {
            match self {
                Self::Refused => "refused",
                Self::Poison => "poison",
            }
        }
        fn level(self) -> Level {
            Level::WARN
        }
    }

    const LIMITS: LogLimits = LogLimits {
        lines_per_window: 3,
        window_seconds: 10,
    };

    fn at(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    #[test]
    fn the_first_lines_of_a_window_are_written_the_rest_summarized_when_it_ends() {
        let start = Instant::now();
        let mut limiter = LogLimiter::new(LIMITS);
        let written: Vec<bool> = (0..10)
            .map(|i| {
                let admission = limiter.admit(Line::Refused, at(start, i));
                assert!(admission.summaries.is_empty());
                admission.write
            })
            .collect();
        assert_eq!(written.iter().filter(|write| **write).count(), 3);
        assert!(written[..3].iter().all(|write| *write));
        assert_eq!(limiter.next_summary_at(), Some(at(start, 10_000)));
        assert!(limiter.flush(at(start, 9_999)).is_empty());
        assert_eq!(
            limiter.flush(at(start, 10_000)),
            vec![Summary {
                line: Line::Refused,
                suppressed: 7,
                window: Duration::from_secs(10),
            }]
        );
        assert_eq!(limiter.open_windows(), 0);
        assert_eq!(limiter.next_summary_at(), None);
    }

    #[test]
    fn the_next_event_of_any_kind_brings_the_due_summary_and_opens_a_new_window() {
        let start = Instant::now();
        let mut limiter = LogLimiter::new(LIMITS);
        for i in 0..5 {
            limiter.admit(Line::Refused, at(start, i));
        }
        let admission = limiter.admit(Line::Poison, at(start, 12_000));
        assert!(admission.write);
        assert_eq!(admission.summaries.len(), 1);
        assert_eq!(admission.summaries[0].line, Line::Refused);
        assert_eq!(admission.summaries[0].suppressed, 2);
        // Refused starts over: its window ended.
        assert!(limiter.admit(Line::Refused, at(start, 12_001)).write);
    }

    #[test]
    fn kinds_have_windows_of_their_own() {
        let start = Instant::now();
        let mut limiter = LogLimiter::new(LIMITS);
        for i in 0..3 {
            assert!(limiter.admit(Line::Refused, at(start, i)).write);
        }
        assert!(!limiter.admit(Line::Refused, at(start, 3)).write);
        assert!(limiter.admit(Line::Poison, at(start, 4)).write);
        assert_eq!(limiter.open_windows(), 2);
    }

    #[test]
    fn a_window_without_suppressed_lines_ends_silently() {
        let start = Instant::now();
        let mut limiter = LogLimiter::new(LIMITS);
        limiter.admit(Line::Refused, start);
        assert_eq!(limiter.next_summary_at(), None);
        assert!(limiter.flush(at(start, 60_000)).is_empty());
        assert_eq!(limiter.open_windows(), 0);
    }

    #[test]
    fn every_event_is_written_or_summarized_exactly_once() {
        let start = Instant::now();
        let mut limiter = LogLimiter::new(LIMITS);
        let (mut written, mut summarized) = (0u64, 0u64);
        // Events of two kinds every 7 ms for a minute: many windows.
        for i in 0..10_000u64 {
            let line = if i % 3 == 0 {
                Line::Poison
            } else {
                Line::Refused
            };
            let admission = limiter.admit(line, at(start, i * 7));
            written += u64::from(admission.write);
            summarized += admission
                .summaries
                .iter()
                .map(|s| s.suppressed)
                .sum::<u64>();
        }
        summarized += limiter
            .flush(at(start, 10_000 * 7 + 10_000))
            .iter()
            .map(|summary| summary.suppressed)
            .sum::<u64>();
        assert_eq!(written + summarized, 10_000);
        // 70 s of events: at most 8 windows per kind, 3 lines each.
        assert!(written <= 2 * 8 * 3, "{written}");
    }

    #[test]
    fn zero_lines_per_window_writes_only_summaries() {
        let start = Instant::now();
        let mut limiter = LogLimiter::new(LogLimits {
            lines_per_window: 0,
            window_seconds: 1,
        });
        assert!(!limiter.admit(Line::Poison, start).write);
        assert_eq!(limiter.flush(at(start, 1_000))[0].suppressed, 1);
    }

    #[test]
    fn a_zero_window_is_refused() {
        let limits = LogLimits {
            lines_per_window: 1,
            window_seconds: 0,
        };
        assert_eq!(limits.validate().unwrap_err().key, "window_seconds");
        assert!(LogLimits::default().validate().is_ok());
    }

    #[tokio::test]
    async fn the_flusher_writes_a_due_summary_without_another_event() {
        let registry = Registry::new();
        let limit = LogLimit::<Line>::new(&registry, "test").unwrap();
        limit.set_limits(LogLimits {
            lines_per_window: 1,
            window_seconds: 1,
        });
        assert!(limit.admit(Line::Poison));
        assert!(!limit.admit(Line::Poison));
        assert!(!limit.admit(Line::Poison));
        assert_eq!(limit.suppressed_count(), 2);
        assert!(limit.lock().flusher);
        tokio::time::timeout(Duration::from_secs(30), async {
            while limit.lock().limiter.open_windows() > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap();
        // Flushed and done: the flusher ended with nothing left to summarize.
        tokio::time::timeout(Duration::from_secs(30), async {
            while limit.lock().flusher {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
    }
}
