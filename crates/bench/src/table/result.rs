//! What the table scenario's result holds (written as JSON), its human summary, and its
//! plot: each edge's RSS from its start, and the records the loaded one applied.

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;
use serde::Serialize;

use crate::report::Machine;
use crate::result::TargetCheck;

/// The result of `fanout bench table`.
#[derive(Debug, Clone, Serialize)]
pub struct TableBenchResult {
    pub scenario: &'static str,
    pub target: String,
    pub machine: Machine,
    pub settings: TableSettings,
    pub produced: Produced,
    /// An edge on the empty topics.
    pub baseline: EdgeRun,
    /// An edge started once every record was acknowledged.
    pub loaded: EdgeRun,
    /// (loaded RSS at ready − baseline RSS at ready) / users: what `check.rss_per_user`
    /// is of.
    pub rss_per_user_bytes: f64,
    /// The same, `settle_seconds` after ready.
    pub rss_per_user_settled_bytes: f64,
    pub check: TableCheck,
    pub result_file: String,
    pub plot_file: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableSettings {
    pub users: u64,
    pub partitions: i32,
    pub key_bytes: usize,
    pub key_example: String,
    pub settle_seconds: f64,
}

/// The count records, and what unread-counts holds of them.
#[derive(Debug, Clone, Serialize)]
pub struct Produced {
    pub acknowledged: u64,
    pub failed: u64,
    /// From the first send to the last one queued in the producer.
    pub queued_seconds: f64,
    /// From the first send to the last acknowledgement.
    pub seconds: f64,
    /// Acknowledged records per second.
    pub per_second: f64,
    pub partitions: usize,
    /// Sum over the partitions of high − low watermark.
    pub records_in_topic: i64,
    /// Fewest and most records of a partition.
    pub records_per_partition: (i64, i64),
    /// Partitions whose low watermark is above 0: the broker deleted records (empty
    /// in any result written: the run fails first).
    pub deleted_from: Vec<i32>,
}

/// One edge process, from its start to `settle_seconds` after it was ready.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EdgeRun {
    /// Seconds from the process's start until its admin port first answered.
    pub admin_seconds: Option<f64>,
    /// ... until the first sample that saw a record applied.
    pub first_applied_seconds: Option<f64>,
    /// ... until `/readyz` answered 200: the catch-up time.
    pub ready_seconds: f64,
    /// RSS when the admin port first answered, at ready, `settle_seconds` later, and
    /// the peak (VmHWM) by then.
    pub rss_admin_kib: Option<u64>,
    pub rss_ready_kib: u64,
    pub rss_settled_kib: u64,
    pub rss_peak_kib: u64,
    /// `fanout_edge_table_keys` at ready.
    pub table_keys: Option<u64>,
    /// Count records applied at ready.
    pub records_applied: Option<u64>,
    /// CPU seconds from the start to ready.
    pub cpu: EdgeCpu,
    /// RSS (and records applied) over time from the start.
    pub samples: Vec<Sample>,
}

/// CPU seconds from the edge's start to its ready.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct EdgeCpu {
    pub edge: f64,
    /// The edge's librdkafka threads (`rdk:*`): fetching, parsing the record batches.
    pub edge_librdkafka_threads: f64,
    /// Its other threads: the runtime's (decoding the records, the table's apply).
    pub edge_other_threads: f64,
    /// The bench process's embedded broker (0 with `--local-brokers`).
    pub embedded_broker: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    pub seconds: f64,
    pub rss_kib: u64,
    pub applied: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableCheck {
    pub users: u64,
    /// `fanout_edge_table_keys` of the loaded edge once ready.
    pub table_keys: Option<u64>,
    pub records_applied: Option<u64>,
    /// The table holds every user (the run fails if not).
    pub keys_passed: bool,
    pub rss_per_user: TargetCheck,
    pub catch_up: TargetCheck,
    /// Every user in the table and both targets met.
    pub met: bool,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn optional<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "?".to_owned(), |value| value.to_string())
}

fn target_line(check: &TargetCheck) -> String {
    format!(
        "{}: {} (target {}): {}",
        check.metric,
        check.measured,
        check.target,
        if check.met { "MET" } else { "MISSED" }
    )
}

/// The human summary, for stderr.
pub fn summary(result: &TableBenchResult) -> String {
    let settings = &result.settings;
    let produced = &result.produced;
    let mut lines = vec![format!(
        "table: {} users (keys of {} B, e.g. {}), unread-counts on {} partitions; {}",
        settings.users,
        settings.key_bytes,
        settings.key_example,
        settings.partitions,
        result.target
    )];
    lines.push(format!(
        "produced: {} acknowledged ({} failed) in {:.2} s, {:.0}/s; the topic holds {} ({}-{} a partition), nothing deleted",
        produced.acknowledged,
        produced.failed,
        produced.seconds,
        produced.per_second,
        produced.records_in_topic,
        produced.records_per_partition.0,
        produced.records_per_partition.1
    ));
    for (name, run) in [
        ("baseline edge (empty topics)", &result.baseline),
        ("loaded edge", &result.loaded),
    ] {
        lines.push(format!(
            "{name}: admin answered {} s, first record applied {} s, ready {:.2} s after its start; RSS {} MiB at the admin's first answer, {:.1} MiB at ready, {:.1} MiB {} s later, peak {:.1} MiB; table_keys {}",
            optional(run.admin_seconds),
            optional(run.first_applied_seconds),
            run.ready_seconds,
            optional(run.rss_admin_kib.map(|kib| (mib(kib) * 10.0).round() / 10.0)),
            mib(run.rss_ready_kib),
            mib(run.rss_settled_kib),
            settings.settle_seconds,
            mib(run.rss_peak_kib),
            optional(run.table_keys)
        ));
        lines.push(format!(
            "  CPU to ready: edge {:.2} s (librdkafka threads {:.2}, others {:.2}), embedded broker {:.2} s",
            run.cpu.edge,
            run.cpu.edge_librdkafka_threads,
            run.cpu.edge_other_threads,
            run.cpu.embedded_broker
        ));
    }
    lines.push(format!(
        "RSS growth per user: {:.1} B at ready, {:.1} B settled",
        result.rss_per_user_bytes, result.rss_per_user_settled_bytes
    ));
    let check = &result.check;
    lines.push(target_line(&check.rss_per_user));
    lines.push(target_line(&check.catch_up));
    lines.push(format!(
        "check: table_keys {} for {} users ({} records applied): {}; met: {}",
        optional(check.table_keys),
        check.users,
        optional(check.records_applied),
        if check.keys_passed { "OK" } else { "FAILED" },
        check.met
    ));
    lines.push(format!(
        "wrote {} and {}",
        result.result_file, result.plot_file
    ));
    lines.join("\n")
}

/// Writes each edge's RSS over the seconds from its start, the loaded one's records
/// applied on a second axis, to `path`.
pub fn plot(path: &Path, result: &TableBenchResult) -> anyhow::Result<()> {
    let runs = [
        ("baseline edge, empty topics: RSS", &result.baseline, BLUE),
        ("loaded edge: RSS", &result.loaded, RED),
    ];
    let end = runs
        .iter()
        .flat_map(|(_, run, _)| run.samples.iter().map(|sample| sample.seconds))
        .fold(0.1_f64, f64::max)
        * 1.05;
    let top_mib = runs
        .iter()
        .flat_map(|(_, run, _)| run.samples.iter().map(|sample| mib(sample.rss_kib)))
        .fold(1.0_f64, f64::max)
        * 1.15;
    let top_records = (result.settings.users as f64 / 1000.0).max(1.0) * 1.15;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).context("drawing the plot")?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "fanout bench table: an edge reading {} users' counts",
                result.settings.users
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0.0..end, 0.0..top_mib)
        .context("drawing the plot")?
        .set_secondary_coord(0.0..end, 0.0..top_records);
    chart
        .configure_mesh()
        .x_desc("seconds from the edge process's start")
        .y_desc("RSS (MiB)")
        .draw()
        .context("drawing the plot")?;
    chart
        .configure_secondary_axes()
        .y_desc("records applied (thousands)")
        .draw()
        .context("drawing the plot")?;
    for (label, run, color) in runs {
        let points: Vec<(f64, f64)> = run
            .samples
            .iter()
            .map(|sample| (sample.seconds, mib(sample.rss_kib)))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .context("drawing the plot")?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    let applied: Vec<(f64, f64)> = result
        .loaded
        .samples
        .iter()
        .filter_map(|sample| Some((sample.seconds, sample.applied? as f64 / 1000.0)))
        .collect();
    chart
        .draw_secondary_series(LineSeries::new(applied, GREEN.stroke_width(2)))
        .context("drawing the plot")?
        .label("loaded edge: records applied (right axis)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    let ready = result.loaded.ready_seconds;
    chart
        .draw_series(LineSeries::new(
            vec![(ready, 0.0), (ready, top_mib)],
            BLACK.stroke_width(1),
        ))
        .context("drawing the plot")?
        .label(format!("loaded edge ready: {ready:.2} s"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    crate::report::draw_legend(&mut chart)?;
    root.present().context("writing the plot")?;
    Ok(())
}
