//! The HTML report: one self-contained page (inline SVG and CSS, no scripts, nothing fetched),
//! so it can be attached to an issue or opened from a CI artifact as it is.
//!
//! Sections: the latest bench run's side-by-side table, throughput against the raw limits,
//! latency percentiles, resident memory against the 200 MB target, and the ratios of every run
//! so far; then the latest lag run's figures per read region, against the lag targets, and its
//! lag over time.

use std::{
    fmt::Write,
    path::{Path, PathBuf},
};

use crate::{
    lag::{self, TARGET_P50_MS, TARGET_P99_MS},
    load::Pace,
    results::{BenchRun, LagRun, Machine, PathResult, Side},
    stats::Latency,
};

const OURS: &str = "#2563eb";
const RAW: &str = "#9ca3af";
const PERCENTILES: [(&str, &str); 4] = [
    ("p50", "#1d4ed8"),
    ("p90", "#60a5fa"),
    ("p99", "#f59e0b"),
    ("max", "#dc2626"),
];
/// The issue's memory bound per service under load.
const MEMORY_TARGET_MIB: f64 = 200.0;
/// One colour per read region in the lag charts.
const REGIONS: [&str; 4] = ["#2563eb", "#059669", "#9333ea", "#ea580c"];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn number(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

/// Whole decades around `min..=max`, at least one: the range of a log axis.
fn decade_range(min: f64, max: f64) -> (f64, f64) {
    let lo = min.log10().floor();
    (10f64.powf(lo), 10f64.powf(max.log10().ceil().max(lo + 1.0)))
}

/// Where `value` falls on a log axis from `lo` to `hi`, from 0 to 1.
fn log_share(value: f64, lo: f64, hi: f64) -> f64 {
    ((value.max(lo).log10() - lo.log10()) / (hi.log10() - lo.log10())).clamp(0.0, 1.0)
}

/// The grid of a log axis: every decade from `lo` to `hi`.
fn decades(lo: f64, hi: f64) -> Vec<f64> {
    let mut tick = lo;
    let mut ticks = Vec::new();
    while tick <= hi * 1.0001 {
        ticks.push(tick);
        tick *= 10.0;
    }
    ticks
}

/// One labelled row of bars.
struct Row {
    label: String,
    /// (colour, value, text shown after the bar)
    bars: Vec<(&'static str, f64, String)>,
}

/// Horizontal bars; `log` spreads values over decades (our rates and the raw limits differ by
/// orders of magnitude, and linear bars would hide the smaller ones). `marker` draws a vertical
/// reference line (a target).
fn bar_chart(rows: &[Row], log: bool, unit: &str, marker: Option<(f64, &str)>) -> String {
    const LABEL_W: f64 = 330.0;
    const PLOT_W: f64 = 560.0;
    const TEXT_W: f64 = 110.0;
    const BAR_H: f64 = 14.0;
    const ROW_GAP: f64 = 12.0;
    let values = rows
        .iter()
        .flat_map(|row| row.bars.iter().map(|(_, v, _)| *v))
        .chain(marker.map(|(v, _)| v))
        .filter(|v| *v > 0.0);
    let (min, max) = values.fold((f64::MAX, 0.0_f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if max <= 0.0 {
        return "<p>no data</p>".into();
    }
    let (lo, hi) = if log {
        decade_range(min, max)
    } else {
        (0.0, max * 1.05)
    };
    let x = |v: f64| -> f64 {
        let share = if log {
            log_share(v, lo, hi)
        } else {
            (v / hi).clamp(0.0, 1.0)
        };
        LABEL_W + share * PLOT_W
    };
    let rows_h: f64 = rows
        .iter()
        .map(|row| row.bars.len() as f64 * BAR_H + ROW_GAP)
        .sum();
    let height = rows_h + 40.0;
    let width = LABEL_W + PLOT_W + TEXT_W;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    // Grid: decades on a log axis, fifths on a linear one.
    let ticks: Vec<f64> = if log {
        decades(lo, hi)
    } else {
        (0..=5).map(|i| hi * f64::from(i) / 5.0).collect()
    };
    for tick in ticks {
        let tx = x(tick);
        let _ = write!(
            svg,
            r##"<line x1="{tx:.1}" y1="10" x2="{tx:.1}" y2="{:.1}" stroke="#e5e7eb"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle" fill="#6b7280">{} {unit}</text>"##,
            rows_h + 14.0,
            rows_h + 30.0,
            number(tick)
        );
    }
    let mut y = 14.0;
    for row in rows {
        let block = row.bars.len() as f64 * BAR_H;
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#111827">{}</text>"##,
            LABEL_W - 8.0,
            y + block / 2.0 + 4.0,
            escape(&row.label)
        );
        for (colour, value, text) in &row.bars {
            let end = x(*value);
            let _ = write!(
                svg,
                r##"<rect x="{LABEL_W}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{colour}"/><text x="{:.1}" y="{:.1}" fill="#374151">{}</text>"##,
                (end - LABEL_W).max(1.0),
                BAR_H - 2.0,
                end + 4.0,
                y + BAR_H - 4.0,
                escape(text)
            );
            y += BAR_H;
        }
        y += ROW_GAP;
    }
    if let Some((value, label)) = marker {
        let mx = x(value);
        let _ = write!(
            svg,
            r##"<line x1="{mx:.1}" y1="6" x2="{mx:.1}" y2="{:.1}" stroke="#dc2626" stroke-dasharray="4 3"/><text x="{:.1}" y="10" fill="#dc2626">{}</text>"##,
            rows_h + 14.0,
            mx + 4.0,
            escape(label)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn legend(items: &[(&str, &str)]) -> String {
    let mut out = String::from(r#"<p class="legend">"#);
    for (name, colour) in items {
        let _ = write!(
            out,
            r#"<span><i style="background:{colour}"></i>{}</span>"#,
            escape(name)
        );
    }
    out.push_str("</p>");
    out
}

fn pace_label(pace: &Pace) -> String {
    pace.to_string()
}

fn throughput_chart(run: &BenchRun) -> String {
    let mut rows = Vec::new();
    let mut groups: Vec<(&str, String)> = Vec::new();
    for path in &run.paths {
        let key = (path.group.as_str(), pace_label(&path.load.pace));
        if !groups.contains(&key) {
            groups.push(key);
        }
    }
    for (group, pace) in groups {
        let bars = run
            .paths
            .iter()
            .filter(|p| p.group == group && pace_label(&p.load.pace) == pace)
            .map(|p| {
                let colour = if p.side == Side::Ours { OURS } else { RAW };
                (
                    colour,
                    p.load.throughput,
                    format!("{}/s  {}", number(p.load.throughput), p.name),
                )
            })
            .collect();
        rows.push(Row {
            label: format!("{group} ({pace})"),
            bars,
        });
    }
    bar_chart(&rows, true, "/s", None)
}

/// A row of p50, p90, p99 and max bars.
fn percentile_row(label: &str, latency: &Latency) -> Row {
    let values = [
        latency.p50_ms,
        latency.p90_ms,
        latency.p99_ms,
        latency.max_ms,
    ];
    Row {
        label: label.to_owned(),
        bars: PERCENTILES
            .iter()
            .zip(values)
            .map(|((name, colour), value)| (*colour, value, format!("{name} {} ms", number(value))))
            .collect(),
    }
}

fn latency_chart(run: &BenchRun) -> String {
    let rows: Vec<Row> = run
        .paths
        .iter()
        .filter_map(|path: &PathResult| {
            Some(percentile_row(&path.name, path.load.latency.as_ref()?))
        })
        .collect();
    bar_chart(&rows, true, "ms", None)
}

fn memory_chart(run: &BenchRun) -> String {
    let rows: Vec<Row> = run
        .memory
        .iter()
        .map(|peak| Row {
            label: peak.process.clone(),
            bars: vec![(
                OURS,
                peak.max_rss_mib,
                format!("{} MiB", number(peak.max_rss_mib)),
            )],
        })
        .collect();
    bar_chart(
        &rows,
        false,
        "MiB",
        Some((MEMORY_TARGET_MIB, "target 200 MB")),
    )
}

fn summary_table(run: &BenchRun) -> String {
    let find = |name: &str| run.paths.iter().find(|p| p.name == name);
    let latency = |path: Option<&PathResult>| {
        path.and_then(|p| p.load.latency.as_ref()).map_or_else(
            || "–".to_owned(),
            |l| format!("{} / {}", number(l.p50_ms), number(l.p99_ms)),
        )
    };
    let mut out = String::from(
        "<table><tr><th>path</th><th>pace</th><th>ours</th><th>raw limit</th><th>ours/s</th><th>raw/s</th><th>ratio</th><th>ours p50 / p99 ms</th><th>raw p50 / p99 ms</th></tr>",
    );
    for comparison in &run.comparisons {
        let (ours, raw) = (find(&comparison.ours), find(&comparison.raw));
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n><b>{:.2}</b></td><td class=n>{}</td><td class=n>{}</td></tr>",
            escape(&comparison.group),
            ours.map_or_else(String::new, |o| escape(&pace_label(&o.load.pace))),
            escape(&comparison.ours),
            escape(&comparison.raw),
            number(ours.map_or(0.0, |o| o.load.throughput)),
            number(raw.map_or(0.0, |r| r.load.throughput)),
            comparison.throughput_ratio,
            latency(ours),
            latency(raw),
        );
    }
    out.push_str("</table>");
    let failures: Vec<String> = run
        .paths
        .iter()
        .filter(|p| !p.load.errors.is_empty())
        .map(|p| format!("{}: {:?}", escape(&p.name), p.load.errors))
        .chain(
            run.skipped
                .iter()
                .map(|s| format!("{} skipped: {}", escape(&s.group), escape(&s.reason))),
        )
        .collect();
    if !failures.is_empty() {
        let _ = write!(out, "<p class=warn>{}</p>", failures.join("<br>"));
    }
    out
}

fn history_table(runs: &[(PathBuf, BenchRun)]) -> String {
    let mut out =
        String::from("<table><tr><th>run</th><th>comparison</th><th>pace</th><th>ratio</th></tr>");
    for (_, run) in runs.iter().rev() {
        for comparison in &run.comparisons {
            let pace = run
                .paths
                .iter()
                .find(|p| p.name == comparison.ours)
                .map_or_else(String::new, |p| pace_label(&p.load.pace));
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{} vs {}</td><td>{}</td><td class=n>{:.2}</td></tr>",
                escape(&run.started_at),
                escape(&comparison.ours),
                escape(&comparison.raw),
                escape(&pace),
                comparison.throughput_ratio
            );
        }
    }
    out.push_str("</table>");
    out
}

/// One line of `line_chart`: a value at each x, `None` where there is none (the line breaks).
struct Series {
    colour: &'static str,
    dashed: bool,
    points: Vec<(f64, Option<f64>)>,
}

/// Lines over a linear x axis and a log y axis (a lag spike sits orders of magnitude above the
/// median, which a linear axis would flatten to the floor), with dashed horizontal reference
/// lines (targets).
fn line_chart(series: &[Series], x_unit: &str, y_unit: &str, references: &[(f64, &str)]) -> String {
    const LEFT: f64 = 80.0;
    const PLOT_W: f64 = 800.0;
    const RIGHT: f64 = 140.0;
    const TOP: f64 = 10.0;
    const PLOT_H: f64 = 260.0;
    let values = series
        .iter()
        .flat_map(|line| line.points.iter().filter_map(|(_, y)| *y))
        .chain(references.iter().map(|(v, _)| *v))
        .filter(|v| *v > 0.0);
    let (min, max) = values.fold((f64::MAX, 0.0_f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if max <= 0.0 {
        return "<p>no data</p>".into();
    }
    let (lo, hi) = decade_range(min, max);
    let x_max = series
        .iter()
        .flat_map(|line| line.points.iter().map(|(x, _)| *x))
        .fold(1.0_f64, f64::max);
    let x = |v: f64| LEFT + v / x_max * PLOT_W;
    let y = |v: f64| TOP + (1.0 - log_share(v, lo, hi)) * PLOT_H;
    let (width, height) = (LEFT + PLOT_W + RIGHT, TOP + PLOT_H + 30.0);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    for tick in decades(lo, hi) {
        let ty = y(tick);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="#e5e7eb"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#6b7280">{} {y_unit}</text>"##,
            LEFT + PLOT_W,
            LEFT - 6.0,
            ty + 4.0,
            number(tick)
        );
    }
    // About ten labelled steps along x, on whole units.
    let step = (x_max / 10.0).ceil().max(1.0);
    let mut tick = 0.0;
    while tick <= x_max {
        let tx = x(tick);
        let _ = write!(
            svg,
            r##"<line x1="{tx:.1}" y1="{TOP}" x2="{tx:.1}" y2="{:.1}" stroke="#f3f4f6"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle" fill="#6b7280">{tick:.0} {x_unit}</text>"##,
            TOP + PLOT_H,
            TOP + PLOT_H + 18.0,
        );
        tick += step;
    }
    for (value, label) in references {
        let ry = y(*value);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{ry:.1}" x2="{:.1}" y2="{ry:.1}" stroke="#dc2626" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" fill="#dc2626">{}</text>"##,
            LEFT + PLOT_W,
            LEFT + PLOT_W + 6.0,
            ry + 4.0,
            escape(label)
        );
    }
    for line in series {
        let mut path = String::new();
        // A dot on every point, so a second standing alone between gaps still shows.
        let mut dots = String::new();
        let mut drawing = false;
        for (px, py) in &line.points {
            match py {
                Some(value) => {
                    let (cx, cy) = (x(*px), y(*value));
                    let _ = write!(path, "{}{cx:.1} {cy:.1} ", if drawing { "L" } else { "M" });
                    let _ = write!(
                        dots,
                        r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="2" fill="{}"/>"#,
                        line.colour
                    );
                    drawing = true;
                }
                None => drawing = false,
            }
        }
        let dash = if line.dashed {
            r#" stroke-dasharray="6 3""#
        } else {
            ""
        };
        let _ = write!(
            svg,
            r#"<path d="{}" fill="none" stroke="{}" stroke-width="1.5" stroke-linejoin="round"{dash}/>{dots}"#,
            path.trim_end(),
            line.colour
        );
    }
    svg.push_str("</svg>");
    svg
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn machine_line(machine: &Machine) -> String {
    format!(
        "Machine: {} CPUs ({}), {:.0} GiB, Linux {}.",
        machine.cpus,
        escape(&machine.cpu_model),
        machine.memory_gib,
        escape(&machine.kernel)
    )
}

fn bench_section(runs: &[(PathBuf, BenchRun)]) -> String {
    let Some((path, latest)) = runs.last() else {
        return String::new();
    };
    let mut page = String::new();
    let _ = write!(
        page,
        "<p class=meta>Latest run {} ({}), {} concurrent callers, {} s per path, {} connections, {} accounts.<br>{} Every component co-located on this shared machine: compare ratios within a run, not absolute figures across runs.<br>Command: <code>{}</code></p>",
        escape(&latest.started_at),
        escape(&file_name(path)),
        latest.concurrency,
        latest.duration_s,
        latest.connections,
        latest.accounts,
        machine_line(&latest.machine),
        escape(&latest.command),
    );
    page.push_str("<h2>Ours against the raw limits</h2>");
    page.push_str(&summary_table(latest));
    page.push_str("<h2>Throughput against the raw limits (log scale)</h2>");
    page.push_str(&legend(&[("ours", OURS), ("raw limit", RAW)]));
    page.push_str(&throughput_chart(latest));
    page.push_str("<h2>Latency percentiles (log scale)</h2>");
    page.push_str(&legend(&PERCENTILES));
    page.push_str(&latency_chart(latest));
    if !latest.memory.is_empty() {
        page.push_str("<h2>Peak resident memory during the run</h2>");
        page.push_str(&memory_chart(latest));
    }
    page.push_str("<h2>Every run</h2>");
    page.push_str(&history_table(runs));
    page
}

fn lag_table(run: &LagRun) -> String {
    let mut out = String::from(
        "<table><tr><th>region</th><th>visible</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>max ms</th><th>not visible</th><th>GetPortfolio at rest p50 ms</th><th>targets</th></tr>",
    );
    for region in &run.regions {
        let figure = |pick: Pick| {
            region
                .lag
                .as_ref()
                .map_or_else(|| "–".to_owned(), |l| number(pick(l)))
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n><b>{}</b></td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td>{}</td></tr>",
            escape(&region.region),
            region.lag.as_ref().map_or(0, |l| l.samples),
            figure(|l| l.p50_ms),
            figure(|l| l.p90_ms),
            figure(|l| l.p99_ms),
            figure(|l| l.max_ms),
            region.not_visible_count(),
            region
                .round_trip_at_rest
                .as_ref()
                .map_or_else(|| "–".to_owned(), |l| number(l.p50_ms)),
            escape(&lag::against_targets(region.lag.as_ref())),
        );
    }
    out.push_str("</table>");
    let mut warnings: Vec<String> = run
        .regions
        .iter()
        .filter(|region| !region.not_visible.is_empty())
        .map(|region| {
            let seconds: Vec<String> = region
                .over_time
                .iter()
                .filter(|bucket| bucket.not_visible > 0)
                .map(|bucket| bucket.second.to_string())
                .collect();
            format!(
                "{}: {} orders never visible {:?}, answered in seconds {}",
                escape(&region.region),
                region.not_visible_count(),
                region.not_visible,
                seconds.join(", ")
            )
        })
        .collect();
    if !run.orders.errors.is_empty() {
        warnings.push(format!("PlaceOrder errors: {:?}", run.orders.errors));
    }
    if !warnings.is_empty() {
        let _ = write!(out, "<p class=warn>{}</p>", warnings.join("<br>"));
    }
    out
}

/// One percentile of a latency summary.
type Pick = fn(&Latency) -> f64;

/// The percentiles drawn over time, and whether their line is dashed.
const OVER_TIME: [(&str, bool, Pick); 2] = [
    ("p50", false, |l| l.p50_ms),
    ("p99 (dashed)", true, |l| l.p99_ms),
];

/// p50 (solid) and p99 (dashed) of each second, one colour per region.
fn lag_over_time(run: &LagRun) -> (String, String) {
    let mut series = Vec::new();
    let mut names = Vec::new();
    for (region, colour) in run.regions.iter().zip(REGIONS.into_iter().cycle()) {
        for (percentile, dashed, pick) in OVER_TIME {
            names.push((format!("{} {percentile}", region.region), colour));
            series.push(Series {
                colour,
                dashed,
                points: region
                    .over_time
                    .iter()
                    .map(|bucket| (bucket.second as f64, bucket.lag.as_ref().map(pick)))
                    .collect(),
            });
        }
    }
    let names: Vec<(&str, &str)> = names
        .iter()
        .map(|(name, colour)| (name.as_str(), *colour))
        .collect();
    (
        legend(&names),
        line_chart(
            &series,
            "s",
            "ms",
            &[(TARGET_P50_MS, "p50 target"), (TARGET_P99_MS, "p99 target")],
        ),
    )
}

fn lag_section(runs: &[(PathBuf, LagRun)]) -> String {
    let Some((path, run)) = runs.last() else {
        return String::new();
    };
    let mut page = String::from("<h2>Order-to-view lag</h2>");
    let _ = write!(
        page,
        "<p class=meta>Latest lag run {} ({}): {:.0} orders/s offered, {:.1}/s answered ({} accepted, {} rejected) over {:.1} s, {} accounts. Lag runs from the <code>PlaceOrder</code> answer to the region's answer to <code>GetPortfolio</code> with <code>min_version</code> = the order's version, so it includes that read's round trip (at rest: the last column). Targets at 500 orders/s, per region: p50 ≤ {TARGET_P50_MS} ms, p99 ≤ {TARGET_P99_MS} ms (reported, not asserted).<br>{}<br>Command: <code>{}</code></p>",
        escape(&run.started_at),
        escape(&file_name(path)),
        run.rate,
        run.orders.throughput,
        run.orders.ok,
        run.orders.rejected,
        run.orders.elapsed_s,
        run.accounts,
        machine_line(&run.machine),
        escape(&run.command),
    );
    page.push_str(&lag_table(run));
    page.push_str("<h2>Lag percentiles by region (log scale)</h2>");
    page.push_str(&legend(&PERCENTILES));
    let rows: Vec<Row> = run
        .regions
        .iter()
        .filter_map(|region| Some(percentile_row(&region.region, region.lag.as_ref()?)))
        .collect();
    page.push_str(&bar_chart(
        &rows,
        true,
        "ms",
        Some((TARGET_P99_MS, "p99 target")),
    ));
    page.push_str("<h2>Lag over time (per second of the run, log scale)</h2>");
    let (names, chart) = lag_over_time(run);
    page.push_str(&names);
    page.push_str(&chart);
    page
}

/// The whole page, from every run (oldest first); the latest bench and lag runs are shown in
/// detail.
pub fn html(runs: &[(PathBuf, BenchRun)], lags: &[(PathBuf, LagRun)]) -> String {
    let mut page = String::from(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>Trading backend: load test report</title><style>
body{font-family:sans-serif;margin:24px;color:#111827;max-width:1100px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #e5e7eb}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #e5e7eb;padding:4px 8px;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}.meta{color:#4b5563;font-size:13px}
.legend span{margin-right:16px;font-size:13px}.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px}
.warn{color:#b45309;font-size:13px}
</style></head><body><h1>Trading backend: load test report</h1>"#,
    );
    if runs.is_empty() && lags.is_empty() {
        page.push_str("<p>no results</p>");
    }
    page.push_str(&bench_section(runs));
    page.push_str(&lag_section(lags));
    page.push_str("</body></html>");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lag_run_alone_gets_its_table_chart_and_targets() {
        let run: LagRun =
            serde_json::from_str(&crate::results::tests::lag_json()).expect("lag fixture");
        let page = html(&[], &[(PathBuf::from("lag-20260101T000100Z.json"), run)]);
        assert!(page.contains("Order-to-view lag"));
        assert!(page.contains("Lag over time"));
        assert!(page.contains("p99 target"));
        assert!(!page.contains("Ours against the raw limits"));
        // Second 1 has no samples: the p50 line stops there and starts again at second 2.
        let p50 = page
            .split("<path d=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a p50 line");
        assert_eq!(p50.matches('M').count(), 2, "{p50}");
        assert!(!p50.contains('L'), "{p50}");
    }
}
