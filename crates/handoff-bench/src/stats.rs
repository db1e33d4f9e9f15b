//! Percentiles and the split of requests into steady state and rollover windows.

use crate::load::{FAILURE_KINDS, Outcome, Sample};

/// A rollover window in microseconds since the epoch: trigger → old generation gone.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Window {
    pub start_us: u64,
    pub end_us: u64,
}

/// Splits windows at `switch_us` (the supervisor said the new generation serves): the start
/// phase [trigger, switch] and the drain phase [switch, old gone].
pub fn split_windows(windows: &[Window], switch_us: &[Option<u64>]) -> (Vec<Window>, Vec<Window>) {
    let mut start = Vec::new();
    let mut drain = Vec::new();
    for (w, s) in windows.iter().zip(switch_us) {
        if let Some(s) = *s {
            let s = s.clamp(w.start_us, w.end_us);
            start.push(Window {
                start_us: w.start_us,
                end_us: s,
            });
            drain.push(Window {
                start_us: s,
                end_us: w.end_us,
            });
        }
    }
    (start, drain)
}

/// The value at quantile `q` (0..=1) of sorted values (nearest rank), or None when empty.
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

pub fn median_f64(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    quantile(&v, 0.5)
}

/// Latency figures of a set of requests, in milliseconds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl Latency {
    /// Latency of the successful requests among `samples`.
    pub fn of<'a>(samples: impl Iterator<Item = &'a Sample>) -> Latency {
        let mut lat: Vec<u32> = samples
            .filter(|s| s.outcome == Outcome::Ok)
            .map(|s| s.lat_us)
            .collect();
        lat.sort_unstable();
        let ms = |v: Option<u32>| v.map(|us| us as f64 / 1000.0);
        Latency {
            count: lat.len(),
            p50_ms: ms(quantile(&lat, 0.50)),
            p99_ms: ms(quantile(&lat, 0.99)),
            max_ms: ms(lat.last().copied()),
        }
    }
}

/// Whether a request's lifetime overlaps any window. `windows` sorted by start, disjoint.
pub struct WindowIndex<'a> {
    windows: &'a [Window],
}

impl<'a> WindowIndex<'a> {
    pub fn new(windows: &'a [Window]) -> Self {
        WindowIndex { windows }
    }

    pub fn overlaps(&self, s: &Sample) -> bool {
        let (a, b) = (s.start_us, s.end_us());
        // The first window that ends at or after the request starts.
        let i = self.windows.partition_point(|w| w.end_us < a);
        self.windows.get(i).is_some_and(|w| w.start_us <= b)
    }
}

/// Requests counted by outcome.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Counts {
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    /// (kind, count) for every failure kind that occurred.
    pub failures: Vec<(String, u64)>,
}

impl Counts {
    pub fn of<'a>(samples: impl Iterator<Item = &'a Sample>) -> Counts {
        let mut by = [0u64; 7];
        let mut n = 0;
        for s in samples {
            n += 1;
            by[s.outcome as usize] += 1;
        }
        Counts {
            requests: n,
            ok: by[Outcome::Ok as usize],
            failed: n - by[Outcome::Ok as usize],
            failures: FAILURE_KINDS
                .iter()
                .filter(|k| by[**k as usize] > 0)
                .map(|k| (k.name().to_string(), by[*k as usize]))
                .collect(),
        }
    }

    pub fn failures_text(&self) -> String {
        if self.failures.is_empty() {
            return "-".into();
        }
        self.failures
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(start_us: u64, lat_us: u32) -> Sample {
        Sample {
            start_us,
            lat_us,
            outcome: Outcome::Ok,
            keepalive: false,
        }
    }

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&v, 1.0), Some(100));
        assert_eq!(quantile(&[7u32], 0.99), Some(7));
        assert_eq!(quantile::<u32>(&[], 0.5), None);
    }

    #[test]
    fn overlap_with_windows() {
        let w = [
            Window {
                start_us: 100,
                end_us: 200,
            },
            Window {
                start_us: 500,
                end_us: 600,
            },
        ];
        let idx = WindowIndex::new(&w);
        assert!(!idx.overlaps(&s(0, 50)));
        assert!(idx.overlaps(&s(50, 60))); // ends inside
        assert!(idx.overlaps(&s(150, 1))); // inside
        assert!(idx.overlaps(&s(190, 400))); // spans past the end
        assert!(!idx.overlaps(&s(201, 100)));
        assert!(idx.overlaps(&s(300, 250))); // reaches the second
        assert!(!idx.overlaps(&s(601, 10)));
    }

    #[test]
    fn counts_failures_by_kind() {
        let mut v = [s(0, 1), s(1, 1), s(2, 1)];
        v[1].outcome = Outcome::Reset;
        let c = Counts::of(v.iter());
        assert_eq!((c.requests, c.ok, c.failed), (3, 2, 1));
        assert_eq!(c.failures_text(), "1 reset");
    }
}
