//! The latency-over-time plot, one panel per contender, as a hand-written SVG: per 10 ms
//! bucket (by the time a request started) the median and the maximum latency (log scale),
//! rollover windows shaded, failed requests marked in red.

use std::fmt::Write;

use crate::compare::ContenderResult;
use crate::load::Outcome;

const W: f64 = 1000.0;
const LEFT: f64 = 230.0;
const RIGHT: f64 = 20.0;
const PANEL_H: f64 = 110.0;
const PANEL_GAP: f64 = 26.0;
const TOP: f64 = 64.0;
const BUCKET_US: u64 = 10_000;
const Y_MIN_MS: f64 = 0.05;
const Y_MAX_MS: f64 = 5000.0;

/// Length of the excerpt each panel shows.
const SPAN_US: u64 = 3_000_000;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn y_of(ms: f64, top: f64) -> f64 {
    let ms = ms.clamp(Y_MIN_MS, Y_MAX_MS);
    let f = (ms.log10() - Y_MIN_MS.log10()) / (Y_MAX_MS.log10() - Y_MIN_MS.log10());
    top + PANEL_H * (1.0 - f)
}

/// Renders the plot. `title` goes on top.
pub fn plot(results: &[ContenderResult], title: &str) -> String {
    let shown: Vec<&ContenderResult> = results
        .iter()
        .filter(|r| r.left_out.is_none() && !r.samples.is_empty())
        .collect();
    let h = TOP + shown.len() as f64 * (PANEL_H + PANEL_GAP) + 30.0;
    let pw = W - LEFT - RIGHT;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="11">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="10" y="20" font-size="14" font-weight="bold">{}</text>"##,
        esc(title)
    );
    let _ = writeln!(
        s,
        r##"<g transform="translate(10,40)"><rect width="14" height="10" fill="#f6c9a8"/><text x="18" y="9">rollover window (trigger → old generation gone)</text><line x1="300" y1="5" x2="320" y2="5" stroke="#1f5fbf" stroke-width="1.5"/><text x="324" y="9">median latency per 10 ms</text><line x1="470" y1="5" x2="490" y2="5" stroke="#999" stroke-width="1"/><text x="494" y="9">max latency per 10 ms</text><path d="M640,10 l5,-9 l5,9 z" fill="#d62728"/><text x="656" y="9">failed request(s)</text><text x="760" y="9">log scale, ms</text></g>"##
    );
    for (i, r) in shown.iter().enumerate() {
        let top = TOP + i as f64 * (PANEL_H + PANEL_GAP);
        // The excerpt: from shortly before the 5th rollover (or the first), SPAN long.
        let pick = r.windows.len().min(5).saturating_sub(1);
        let t_start = r
            .windows
            .get(pick)
            .map(|w| w.start_us.saturating_sub(300_000))
            .unwrap_or_else(|| r.samples[0].start_us);
        let t_end = t_start + SPAN_US;
        let x_of = |t: u64| LEFT + pw * (t.saturating_sub(t_start)) as f64 / SPAN_US as f64;
        // Label.
        let _ = writeln!(
            s,
            r##"<text x="10" y="{:.1}" font-weight="bold">{}</text><text x="10" y="{:.1}">{} worker ×{}</text><text x="10" y="{:.1}" fill="#555">{} rollovers in {:.1} s shown</text>"##,
            top + 30.0,
            esc(&r.label),
            top + 46.0,
            r.worker.name(),
            r.workers,
            top + 62.0,
            r.windows
                .iter()
                .filter(|w| w.end_us >= t_start && w.start_us <= t_end)
                .count(),
            SPAN_US as f64 / 1e6
        );
        // Frame and grid.
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{top}" width="{pw}" height="{PANEL_H}" fill="none" stroke="#333"/>"##
        );
        for dec in [0.1, 1.0, 10.0, 100.0, 1000.0] {
            let y = y_of(dec, top);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{dec}</text>"##,
                LEFT + pw,
                LEFT - 4.0,
                y + 4.0
            );
        }
        for k in 0..=6 {
            let x = LEFT + pw * k as f64 / 6.0;
            let _ = writeln!(
                s,
                r##"<text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#555">{:.1} s</text>"##,
                top + PANEL_H + 13.0,
                k as f64 * SPAN_US as f64 / 6.0 / 1e6
            );
        }
        // Rollover windows.
        for w in r
            .windows
            .iter()
            .filter(|w| w.end_us >= t_start && w.start_us <= t_end)
        {
            let x1 = x_of(w.start_us.max(t_start));
            let x2 = x_of(w.end_us.min(t_end)).max(x1 + 1.0);
            let _ = writeln!(
                s,
                r##"<rect x="{x1:.1}" y="{top}" width="{:.1}" height="{PANEL_H}" fill="#f6c9a8" opacity="0.8"/>"##,
                x2 - x1
            );
        }
        // Buckets.
        let n = (SPAN_US / BUCKET_US) as usize;
        let mut buckets: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut failed = vec![0u32; n];
        let from = r.samples.partition_point(|x| x.start_us < t_start);
        for smp in r.samples[from..].iter().take_while(|x| x.start_us < t_end) {
            let b = ((smp.start_us - t_start) / BUCKET_US) as usize;
            if b >= n {
                break;
            }
            if smp.outcome == Outcome::Ok {
                buckets[b].push(smp.lat_us);
            } else {
                failed[b] += 1;
            }
        }
        let mut med = String::new();
        let mut max = String::new();
        // A bucket in which no request started breaks the lines (nothing to draw there).
        let mut pen_down = false;
        for (b, v) in buckets.iter_mut().enumerate() {
            if v.is_empty() {
                pen_down = false;
                continue;
            }
            v.sort_unstable();
            let x = x_of(t_start + b as u64 * BUCKET_US + BUCKET_US / 2);
            let m = v[v.len() / 2] as f64 / 1000.0;
            let mx = *v.last().expect("non-empty") as f64 / 1000.0;
            let op = if pen_down { "L" } else { "M" };
            pen_down = true;
            let _ = write!(med, "{op}{x:.1},{:.1} ", y_of(m, top));
            let _ = write!(max, "{op}{x:.1},{:.1} ", y_of(mx, top));
        }
        let _ = writeln!(
            s,
            r##"<path d="{max}" fill="none" stroke="#999" stroke-width="1"/><path d="{med}" fill="none" stroke="#1f5fbf" stroke-width="1.5"/>"##
        );
        for (b, f) in failed.iter().enumerate().filter(|(_, f)| **f > 0) {
            let x = x_of(t_start + b as u64 * BUCKET_US + BUCKET_US / 2);
            let _ = writeln!(
                s,
                r##"<path d="M{:.1},{:.1} l4,-8 l4,8 z" fill="#d62728"><title>{f} failed</title></path>"##,
                x - 4.0,
                top + 10.0
            );
        }
    }
    s.push_str("</svg>\n");
    s
}
