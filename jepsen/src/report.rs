//! The report of a test: `results.json` (the checker's results and the
//! test's metadata) and `index.html`, a self-contained page with the verdict,
//! a latency plot and a throughput plot (inline SVG, nemesis faults shaded,
//! as Jepsen's `latency-raw.png` and `rate.png`), the results and the
//! metadata as tables.

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

use plotters::prelude::*;

use crate::checker::FaultWindow;
use crate::checker::Results;
use crate::checker::ValueSet;
use crate::history::Op;
use crate::history::OpType;

/// The latency plot draws at most this many points; beyond it, `ok` points
/// are thinned evenly (every `fail` and `info` point is kept).
const MAX_POINTS: usize = 40_000;
const PLOT_SIZE: (u32, u32) = (1200, 420);
/// Room on the right of each plot for its legend.
const LEGEND_WIDTH: u32 = 190;

/// Writes `results.json` and `index.html` into `dir` (created if missing).
pub fn write_report(
    dir: &Path,
    test_name: &str,
    ops: &[Op],
    results: &Results,
    meta: &serde_json::Value,
) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let json = serde_json::json!({ "test": test_name, "results": results, "meta": meta });
    let mut text = serde_json::to_string_pretty(&json).map_err(io::Error::from)?;
    text.push('\n');
    fs::write(dir.join("results.json"), text)?;
    fs::write(dir.join("index.html"), render_html(test_name, ops, results, meta))
}

/// The page `write_report` writes as `index.html`.
pub fn render_html(test_name: &str, ops: &[Op], results: &Results, meta: &serde_json::Value) -> String {
    let faults = &results.availability.faults;
    let latency = latency_svg(ops, faults)
        .unwrap_or_else(|e| format!("<p>latency plot unavailable: {}</p>", esc(&e.to_string())));
    let rate = rate_svg(ops, faults)
        .unwrap_or_else(|e| format!("<p>throughput plot unavailable: {}</p>", esc(&e.to_string())));
    let verdict = if results.valid { "VALID" } else { "INVALID" };
    let class = if results.valid { "valid" } else { "invalid" };
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{name}: {verdict}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
.verdict {{ font-size: 3em; font-weight: bold; margin: 0.2em 0; }}
.valid {{ color: #1a7f37; }} .invalid {{ color: #c62828; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em 0; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
tr.bad td {{ background: #fde0e0; }}
.examples {{ font-family: monospace; font-size: 0.9em; word-break: break-all; }}
.plot {{ overflow-x: auto; }}
.summary {{ font-family: monospace; }}
</style></head><body>
<h1>{name}</h1>
<div class="verdict {class}">{verdict}</div>
<p class="summary">{summary}</p>
<h2>Latency</h2>
<div class="plot">{latency}</div>
<h2>Throughput</h2>
<div class="plot">{rate}</div>
"#,
        name = esc(test_name),
        summary = esc(&results.summary_line()),
    );
    results_tables(&mut h, results);
    h.push_str("<h2>Test</h2>\n");
    meta_table(&mut h, meta);
    h.push_str("</body></html>\n");
    h
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn fmt_ms(ms: Option<f64>) -> String {
    ms.map_or_else(|| "—".to_string(), |ms| format!("{ms:.0}"))
}

fn results_tables(h: &mut String, r: &Results) {
    h.push_str("<h2>Checks</h2>\n<table>\n<tr><th>check</th><th>count</th><th>rule</th><th>examples</th></tr>\n");
    let mut row = |name: &str, set: &ValueSet, rule: &str, must_be_zero: bool| {
        let bad = must_be_zero && set.count > 0;
        let _ = writeln!(
            h,
            "<tr{}><td>{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"examples\">{}</td></tr>",
            if bad { " class=\"bad\"" } else { "" },
            esc(name),
            set.count,
            esc(rule),
            esc(&set.examples.join(", ")),
        );
    };
    row("lost", &r.lost, "acknowledged, never received: must be 0", true);
    row("unexpected", &r.unexpected, "received, never sent: must be 0", true);
    row("failed but received", &r.failed_but_received, "send failed for certain, yet received: must be 0", true);
    row("recovered", &r.recovered, "outcome unknown, received: allowed", false);
    row("not consumed", &r.not_consumed, "acknowledged, never acked by a consumer: informational", false);
    let dup_examples: Vec<String> = r.duplicated.examples.iter().map(|d| format!("{} ×{}", d.value, d.times)).collect();
    let _ = writeln!(
        h,
        "<tr><td>duplicated</td><td class=\"num\">{}</td><td>received more than once (max {}×): allowed, at-least-once</td><td class=\"examples\">{}</td></tr>",
        r.duplicated.count,
        r.duplicated.max_times,
        esc(&dup_examples.join(", ")),
    );
    let inv_examples: Vec<String> =
        r.order.examples.iter().map(|i| format!("{}: {} before {}", i.producer, i.sent_second, i.sent_first)).collect();
    let _ = writeln!(
        h,
        "<tr><td>order inversions</td><td class=\"num\">{}</td><td>of {} consecutive acked pairs from {} producers received out of order: informational (FIFO except around redelivery)</td><td class=\"examples\">{}</td></tr>",
        r.order.inversions,
        r.order.pairs_checked,
        r.order.producers,
        esc(&inv_examples.join(", ")),
    );
    h.push_str("</table>\n");

    let c = &r.counts;
    let rows: [(&str, String); 24] = [
        ("operations", c.ops.to_string()),
        ("send invocations", c.send_invocations.to_string()),
        ("values attempted", c.attempted.to_string()),
        ("acked (a send ok)", c.acked.to_string()),
        ("failed (every send fail)", c.failed.to_string()),
        ("indeterminate", c.indeterminate.to_string()),
        ("send ok", c.send_ok.to_string()),
        ("send fail", c.send_fail.to_string()),
        ("send info", c.send_info.to_string()),
        ("send unfinished", c.send_unfinished.to_string()),
        ("values received", c.received.to_string()),
        ("deliveries", c.deliveries.to_string()),
        ("redeliveries (receive count > 1)", c.redeliveries.to_string()),
        ("max receive count", c.max_receive_count.to_string()),
        ("receive ok", c.receive_ok.to_string()),
        ("receive ok, empty", c.receive_empty.to_string()),
        ("receive fail", c.receive_fail.to_string()),
        ("receive info", c.receive_info.to_string()),
        ("ack ok", c.ack_ok.to_string()),
        ("ack fail", c.ack_fail.to_string()),
        ("ack info", c.ack_info.to_string()),
        ("values acked by consumers", c.consumer_acked.to_string()),
        ("nemesis faults", c.faults.to_string()),
        ("order: consecutive pairs checked", r.order.pairs_checked.to_string()),
    ];
    h.push_str("<h2>Counts</h2>\n<table>\n");
    for (name, value) in rows {
        let _ = writeln!(h, "<tr><th>{}</th><td class=\"num\">{}</td></tr>", esc(name), value);
    }
    h.push_str("</table>\n");

    h.push_str("<h2>Availability</h2>\n");
    match &r.availability.longest_send_gap {
        Some(g) => {
            let _ = writeln!(
                h,
                "<p>Longest stretch without a successful send: {:.0} ms, from {:.3} s to {:.3} s.</p>",
                g.ms, g.from_s, g.to_s
            );
        }
        None => h.push_str("<p>No send operations.</p>\n"),
    }
    if !r.availability.faults.is_empty() {
        h.push_str(
            "<table>\n<tr><th>fault</th><th>start (s)</th><th>end (s)</th><th>longest send gap (ms)</th>\
             <th>first ok send after start (ms)</th><th>sends ok</th><th>sends fail/info</th><th>detail</th></tr>\n",
        );
        for w in &r.availability.faults {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td class=\"num\">{:.3}</td><td class=\"num\">{:.3}{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"examples\">{}</td></tr>",
                esc(&w.fault),
                w.start_s,
                w.end_s,
                if w.stopped { "" } else { " (never stopped)" },
                fmt_ms(w.longest_send_gap.as_ref().map(|g| g.ms)),
                fmt_ms(w.time_to_first_ok_send_ms),
                w.sends_ok,
                w.sends_not_ok,
                esc(&w.detail.to_string()),
            );
        }
        h.push_str("</table>\n");
    }
}

fn meta_table(h: &mut String, meta: &serde_json::Value) {
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => esc(s),
        serde_json::Value::Array(items) if items.iter().all(|i| i.is_string()) => {
            esc(&items.iter().filter_map(|i| i.as_str()).collect::<Vec<_>>().join(" "))
        }
        other => esc(&other.to_string()),
    };
    match meta {
        serde_json::Value::Object(m) if !m.is_empty() => {
            h.push_str("<table>\n");
            for (k, v) in m {
                let _ = writeln!(h, "<tr><th>{}</th><td class=\"examples\">{}</td></tr>", esc(k), cell(v));
            }
            h.push_str("</table>\n");
        }
        serde_json::Value::Null => h.push_str("<p>No metadata.</p>\n"),
        serde_json::Value::Object(_) => h.push_str("<p>No metadata.</p>\n"),
        other => {
            let _ = writeln!(h, "<p class=\"examples\">{}</p>", cell(other));
        }
    }
}

/// Fills for fault kinds, in the order the kinds first appear.
const FAULT_COLORS: [RGBColor; 6] = [
    RGBColor(255, 99, 71),
    RGBColor(100, 149, 237),
    RGBColor(186, 85, 211),
    RGBColor(218, 165, 32),
    RGBColor(60, 179, 113),
    RGBColor(128, 128, 128),
];

fn fault_kinds(faults: &[FaultWindow]) -> Vec<(String, RGBColor)> {
    let mut kinds: Vec<(String, RGBColor)> = Vec::new();
    for w in faults {
        if !kinds.iter().any(|(k, _)| *k == w.fault) {
            let color = FAULT_COLORS[kinds.len() % FAULT_COLORS.len()];
            kinds.push((w.fault.clone(), color));
        }
    }
    kinds
}

fn secs(op: &Op) -> f64 {
    op.time_ns as f64 / 1e9
}

/// The x range of the plots: the whole history and every fault, at least 1 s.
fn x_max(ops: &[Op], faults: &[FaultWindow]) -> f64 {
    let last = ops.iter().map(secs).fold(0.0, f64::max);
    let fault_end = faults.iter().map(|w| w.end_s).fold(0.0, f64::max);
    let m = last.max(fault_end);
    if m.is_finite() && m >= 1.0 { m * 1.02 } else { 1.0 }
}

const FS: [&str; 3] = ["send", "receive", "ack"];

fn series_color(f: &str, kind: OpType) -> RGBColor {
    match (f, kind) {
        ("send", OpType::Ok) => RGBColor(34, 139, 34),
        ("receive", OpType::Ok) => RGBColor(31, 119, 180),
        ("ack", OpType::Ok) => RGBColor(0, 160, 160),
        (_, OpType::Fail) => RGBColor(214, 39, 40),
        _ => RGBColor(255, 127, 14),
    }
}

fn kind_name(kind: OpType) -> &'static str {
    match kind {
        OpType::Invoke => "invoke",
        OpType::Ok => "ok",
        OpType::Fail => "fail",
        OpType::Info => "info",
    }
}

/// How a legend entry is drawn.
enum Mark {
    Fill(ShapeStyle),
    Circle(ShapeStyle),
    Triangle(ShapeStyle),
    Cross(ShapeStyle),
    Line(ShapeStyle),
}

/// Draws a legend, one entry per line, in its own area (right of the plot).
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    entries: &[(String, Mark)],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let text = ("sans-serif", 13).into_font().color(&BLACK);
    for (n, (label, mark)) in entries.iter().enumerate() {
        let y = 30 + 18 * n as i32;
        let x = 8;
        match mark {
            Mark::Fill(style) => area.draw(&Rectangle::new([(x, y - 6), (x + 16, y + 6)], *style))?,
            Mark::Circle(style) => area.draw(&Circle::new((x + 8, y), 3, *style))?,
            Mark::Triangle(style) => area.draw(&TriangleMarker::new((x + 8, y), 4, *style))?,
            Mark::Cross(style) => area.draw(&Cross::new((x + 8, y), 3, *style))?,
            Mark::Line(style) => area.draw(&PathElement::new(vec![(x, y), (x + 16, y)], *style))?,
        }
        area.draw(&Text::new(label.clone(), (x + 24, y - 7), text.clone()))?;
    }
    Ok(())
}

/// Shades each fault from `y_lo` to `y_hi`, one color per kind; returns the
/// legend entries.
fn shade_faults<DB: DrawingBackend, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    faults: &[FaultWindow],
    y_lo: f64,
    y_hi: f64,
) -> Result<Vec<(String, Mark)>, DrawingAreaErrorKind<DB::ErrorType>> {
    let mut legend = Vec::new();
    for (kind, color) in fault_kinds(faults) {
        let fill = color.mix(0.18).filled();
        let rects = faults
            .iter()
            .filter(|w| w.fault == kind)
            .map(|w| Rectangle::new([(w.start_s, y_lo), (w.end_s.max(w.start_s), y_hi)], fill));
        chart.draw_series(rects)?;
        legend.push((kind, Mark::Fill(color.mix(0.35).filled())));
    }
    Ok(legend)
}

/// Latency of every completion of send, receive and ack over time, on a log
/// scale, by f (marker) and type (color).
fn latency_svg(ops: &[Op], faults: &[FaultWindow]) -> Result<String, Box<dyn Error>> {
    // (f, type) -> points
    let mut series: BTreeMap<(usize, usize), Vec<(f64, f64)>> = BTreeMap::new();
    let kinds = [OpType::Ok, OpType::Info, OpType::Fail];
    let mut total = 0usize;
    let mut total_ok = 0usize;
    for op in ops {
        if op.process == "nemesis" {
            continue;
        }
        let (Some(fi), Some(ki), Some(lat)) =
            (FS.iter().position(|f| *f == op.f), kinds.iter().position(|k| *k == op.kind), op.latency_ms)
        else {
            continue;
        };
        if !lat.is_finite() {
            continue;
        }
        series.entry((fi, ki)).or_default().push((secs(op), lat.max(0.0)));
        total += 1;
        if op.kind == OpType::Ok {
            total_ok += 1;
        }
    }
    // Thin ok points if there are too many.
    let mut shown_total = total;
    if total > MAX_POINTS {
        let budget_ok = MAX_POINTS.saturating_sub(total - total_ok).max(1000);
        let stride = total_ok.div_ceil(budget_ok).max(1);
        for ((_, ki), pts) in series.iter_mut() {
            if *ki == 0 {
                *pts = pts.iter().copied().step_by(stride).collect();
            }
        }
        shown_total = series.values().map(Vec::len).sum();
    }

    let (min, max) =
        series.values().flatten().fold((f64::INFINITY, 0.0f64), |(lo, hi), p| (lo.min(p.1.max(0.01)), hi.max(p.1)));
    let (y_lo, y_hi) = if min.is_finite() && max > 0.0 {
        (10f64.powf(min.log10().floor()), 10f64.powf(max.max(min * 10.0).log10().ceil()))
    } else {
        (0.1, 1000.0)
    };
    let x_hi = x_max(ops, faults);

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, PLOT_SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot, legend_area) = root.split_horizontally(PLOT_SIZE.0 - LEGEND_WIDTH);
        let caption = if shown_total < total {
            format!("Latency of completions ({shown_total} of {total} points shown; ok points thinned)")
        } else {
            format!("Latency of completions ({total} points)")
        };
        let mut chart = ChartBuilder::on(&plot)
            .caption(caption, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(65)
            .build_cartesian_2d(0f64..x_hi, (y_lo..y_hi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("seconds since start")
            .y_desc("latency (ms)")
            .y_label_formatter(&|v| format_tick(*v))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        let mut legend = shade_faults(&mut chart, faults, y_lo, y_hi)?;
        for ((fi, ki), pts) in &series {
            let (f, kind) = (FS[*fi], kinds[*ki]);
            let color = series_color(f, kind);
            let style = color.mix(if kind == OpType::Ok { 0.55 } else { 0.9 }).filled();
            let points = pts.iter().map(|&(x, y)| (x, y.clamp(y_lo, y_hi)));
            let mark = match *fi {
                0 => {
                    chart.draw_series(points.map(|p| Circle::new(p, 2, style)))?;
                    Mark::Circle(style)
                }
                1 => {
                    chart.draw_series(points.map(|p| TriangleMarker::new(p, 3, style)))?;
                    Mark::Triangle(style)
                }
                _ => {
                    let stroke = color.stroke_width(1);
                    chart.draw_series(points.map(|p| Cross::new(p, 2, stroke)))?;
                    Mark::Cross(stroke)
                }
            };
            legend.push((format!("{f} {} ({})", kind_name(kind), pts.len()), mark));
        }
        draw_legend(&legend_area, &legend)?;
        root.present()?;
    }
    Ok(svg)
}

fn format_tick(v: f64) -> String {
    if v >= 1.0 { format!("{v:.0}") } else { format!("{v}") }
}

/// Completions per second over time, per f and type.
fn rate_svg(ops: &[Op], faults: &[FaultWindow]) -> Result<String, Box<dyn Error>> {
    let x_hi = x_max(ops, faults);
    // Buckets of 1 s, wider for long tests (at most ~300 buckets).
    let bucket = (x_hi / 300.0).ceil().max(1.0);
    let n = (x_hi / bucket).ceil().max(1.0) as usize;
    let kinds = [OpType::Ok, OpType::Info, OpType::Fail];
    let mut counts: BTreeMap<(usize, usize), Vec<u64>> = BTreeMap::new();
    for op in ops {
        if op.process == "nemesis" {
            continue;
        }
        let (Some(fi), Some(ki)) = (FS.iter().position(|f| *f == op.f), kinds.iter().position(|k| *k == op.kind))
        else {
            continue;
        };
        let b = ((secs(op) / bucket) as usize).min(n - 1);
        counts.entry((fi, ki)).or_insert_with(|| vec![0; n])[b] += 1;
    }
    let y_hi = counts.values().flatten().map(|&c| c as f64 / bucket).fold(0.0, f64::max).max(1.0) * 1.1;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, PLOT_SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot, legend_area) = root.split_horizontally(PLOT_SIZE.0 - LEGEND_WIDTH);
        let caption = if bucket > 1.0 {
            format!("Completions per second ({bucket:.0} s buckets)")
        } else {
            "Completions per second".to_string()
        };
        let mut chart = ChartBuilder::on(&plot)
            .caption(caption, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(65)
            .build_cartesian_2d(0f64..x_hi, 0f64..y_hi)?;
        chart
            .configure_mesh()
            .x_desc("seconds since start")
            .y_desc("completions / s")
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        let mut legend = shade_faults(&mut chart, faults, 0.0, y_hi)?;
        for ((fi, ki), buckets) in &counts {
            let (f, kind) = (FS[*fi], kinds[*ki]);
            let color = match (f, kind) {
                ("send", OpType::Info) => RGBColor(255, 127, 14),
                ("send", OpType::Fail) => RGBColor(214, 39, 40),
                ("receive", OpType::Info) => RGBColor(140, 86, 75),
                ("receive", OpType::Fail) => RGBColor(227, 119, 194),
                ("ack", OpType::Info) => RGBColor(188, 189, 34),
                ("ack", OpType::Fail) => RGBColor(127, 127, 127),
                _ => series_color(f, kind),
            };
            let style = color.stroke_width(if kind == OpType::Ok { 2 } else { 1 });
            let total: u64 = buckets.iter().sum();
            let points = buckets.iter().enumerate().map(|(b, &c)| ((b as f64 + 0.5) * bucket, c as f64 / bucket));
            chart.draw_series(LineSeries::new(points, style))?;
            legend.push((format!("{f} {} ({total})", kind_name(kind)), Mark::Line(style)));
        }
        draw_legend(&legend_area, &legend)?;
        root.present()?;
    }
    Ok(svg)
}
