//! The HTML report: one self-contained page (inline SVG and CSS, no scripts, nothing fetched),
//! so it can be attached to an issue or opened from a CI artifact as it is.
//!
//! Sections: the latest run's side-by-side table, throughput against the raw limits, latency
//! percentiles, resident memory against the 200 MB target, and the ratios of every run so far.
//! Results of other kinds (the end-to-end lag, later) get their own section beside these.

use std::{fmt::Write, path::PathBuf};

use crate::{
    load::Pace,
    results::{BenchRun, PathResult, Side},
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
        (
            10f64.powf(min.log10().floor()),
            10f64.powf(max.log10().ceil().max(min.log10().floor() + 1.0)),
        )
    } else {
        (0.0, max * 1.05)
    };
    let x = |v: f64| -> f64 {
        let v = v.max(lo);
        let share = if log {
            (v.log10() - lo.log10()) / (hi.log10() - lo.log10())
        } else {
            v / hi
        };
        LABEL_W + share.clamp(0.0, 1.0) * PLOT_W
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
        let mut t = lo;
        let mut ticks = Vec::new();
        while t <= hi * 1.0001 {
            ticks.push(t);
            t *= 10.0;
        }
        ticks
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

fn latency_chart(run: &BenchRun) -> String {
    let rows: Vec<Row> = run
        .paths
        .iter()
        .filter_map(|path: &PathResult| {
            let latency = path.load.latency.as_ref()?;
            let values = [
                latency.p50_ms,
                latency.p90_ms,
                latency.p99_ms,
                latency.max_ms,
            ];
            Some(Row {
                label: path.name.clone(),
                bars: PERCENTILES
                    .iter()
                    .zip(values)
                    .map(|((name, colour), value)| {
                        (*colour, value, format!("{name} {} ms", number(value)))
                    })
                    .collect(),
            })
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

/// The whole page, from every run (oldest first); the latest run is shown in detail.
pub fn html(runs: &[(PathBuf, BenchRun)]) -> String {
    let Some((path, latest)) = runs.last() else {
        return "<!doctype html><p>no results</p>".into();
    };
    let machine = &latest.machine;
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
    let _ = write!(
        page,
        "<p class=meta>Latest run {} ({}), {} concurrent callers, {} s per path, {} connections, {} accounts.<br>Machine: {} CPUs ({}), {:.0} GiB, Linux {}. Every component co-located on this shared machine: compare ratios within a run, not absolute figures across runs.<br>Command: <code>{}</code></p>",
        escape(&latest.started_at),
        escape(
            &path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
        latest.concurrency,
        latest.duration_s,
        latest.connections,
        latest.accounts,
        machine.cpus,
        escape(&machine.cpu_model),
        machine.memory_gib,
        escape(&machine.kernel),
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
    page.push_str("</body></html>");
    page
}
