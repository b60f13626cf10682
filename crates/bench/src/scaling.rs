//! `fanout bench scaling`: group-message over a range of connections and steady over a
//! range of changes per second, each size a run of its own (its own deployment, its
//! files under `<out_dir>/scaling/`); for each, p50 and p99 latency, pushes delivered
//! of expected, and CPU microseconds per user event of each process. Written as
//! `scaling.json` and `scaling.svg` (p99 and CPU per event against the size).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use serde::Serialize;

use crate::report::Machine;
use crate::result::{CpuResult, WsBenchResult};
use crate::scenario::{ExternalTarget, Scenario, WsBenchOptions, parse_setting};

/// One of the two series of a scaling run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Series {
    GroupMessage,
    Steady,
}

/// `fanout bench scaling`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct ScalingOptions {
    /// group-message's sizes: connections, every one a recipient of each message.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000_u64, 5_000, 10_000, 19_000])]
    pub group_connections: Vec<u64>,
    /// group-message: messages per size.
    #[arg(long, default_value_t = 3)]
    pub messages: u64,
    /// steady's sizes: changes per second.
    #[arg(long, value_delimiter = ',', default_values_t = [5_000_u64, 10_000, 20_000, 40_000])]
    pub steady_rates: Vec<u64>,
    /// steady: connections, the users the changes go to.
    #[arg(long, default_value_t = 15_000)]
    pub steady_connections: u64,
    /// steady: seconds of changes per size.
    #[arg(long, default_value_t = 10.0)]
    pub steady_seconds: f64,
    /// Only this series.
    #[arg(long, value_enum)]
    pub only: Option<Series>,
    /// Partitions of the topics each run creates.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// A running Kafka (`host:port`) instead of the embedded one, as the scenarios take.
    #[arg(long)]
    pub local_brokers: Option<String>,
    /// A librdkafka setting for every Kafka client of each deployment, as the scenarios
    /// take.
    #[arg(long = "kafka-client", value_name = "PROPERTY=VALUE", value_parser = parse_setting)]
    pub kafka_client: Vec<(String, String)>,
    /// Where `scaling.json`, `scaling.svg` and each run's files (under `scaling/`) go.
    #[arg(long, default_value = "target/bench")]
    pub out_dir: PathBuf,
}

/// `scaling.json`.
#[derive(Debug, Clone, Serialize)]
pub struct ScalingResult {
    pub scenario: &'static str,
    pub machine: Machine,
    /// Wall-clock seconds of the whole run.
    pub seconds: f64,
    pub points: Vec<ScalingPoint>,
    pub result_file: String,
    pub plot_file: String,
}

/// One size of one series.
#[derive(Debug, Clone, Serialize)]
pub struct ScalingPoint {
    pub scenario: &'static str,
    /// The size: connections (group-message) or changes per second (steady).
    pub work: u64,
    pub work_unit: &'static str,
    pub connections: u64,
    pub subscribed: u64,
    /// Produce → client receive.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub delivered: u64,
    pub expected: Option<u64>,
    pub delivered_of_expected: Option<f64>,
    /// CPU seconds of each process over the load, and `per_event`: microseconds per
    /// user event.
    pub cpu: CpuResult,
    pub load_at_start: f64,
    pub load_at_end: f64,
    /// The run's own result, if it finished.
    pub result_file: Option<String>,
    /// Why the run failed, if it did (the series goes on).
    pub error: Option<String>,
}

impl ScalingPoint {
    fn of(scenario: Scenario, work: u64, connections: u64, result: &WsBenchResult) -> Self {
        let delivered = result.pushes.received;
        let expected = result.pushes.expected;
        Self {
            scenario: scenario.name(),
            work,
            work_unit: work_unit(scenario),
            connections,
            subscribed: result.connections.subscribed,
            latency_p50_ms: result.latency.p50_ms,
            latency_p99_ms: result.latency.p99_ms,
            latency_max_ms: result.latency.max_ms,
            delivered,
            expected,
            delivered_of_expected: expected
                .filter(|expected| *expected > 0)
                .map(|expected| delivered as f64 / expected as f64),
            cpu: result.cpu.clone(),
            load_at_start: result.machine.load_at_start,
            load_at_end: result.machine.load_at_end,
            result_file: Some(result.result_file.clone()),
            error: None,
        }
    }

    fn failed(scenario: Scenario, work: u64, connections: u64, error: &anyhow::Error) -> Self {
        Self {
            scenario: scenario.name(),
            work,
            work_unit: work_unit(scenario),
            connections,
            subscribed: 0,
            latency_p50_ms: 0.0,
            latency_p99_ms: 0.0,
            latency_max_ms: 0.0,
            delivered: 0,
            expected: None,
            delivered_of_expected: None,
            cpu: CpuResult::default(),
            load_at_start: 0.0,
            load_at_end: 0.0,
            result_file: None,
            error: Some(format!("{error:#}")),
        }
    }
}

fn work_unit(scenario: Scenario) -> &'static str {
    match scenario {
        Scenario::Steady => "changes per second",
        _ => "connections",
    }
}

/// Runs every size of both series (or `--only` one), one after the other, and writes
/// `scaling.json` and `scaling.svg`.
pub async fn run(options: &ScalingOptions) -> anyhow::Result<ScalingResult> {
    let started = Instant::now();
    let mut machine = Machine::read();
    let scaling_dir = options.out_dir.join("scaling");
    std::fs::create_dir_all(&scaling_dir)
        .with_context(|| format!("creating {}", scaling_dir.display()))?;
    let mut sizes = Vec::new();
    if options.only != Some(Series::Steady) {
        sizes.extend(
            options
                .group_connections
                .iter()
                .map(|connections| (Scenario::GroupMessage, *connections, *connections)),
        );
    }
    if options.only != Some(Series::GroupMessage) {
        sizes.extend(
            options
                .steady_rates
                .iter()
                .map(|rate| (Scenario::Steady, *rate, options.steady_connections)),
        );
    }
    let mut points = Vec::new();
    for (index, (scenario, work, connections)) in sizes.iter().copied().enumerate() {
        eprintln!(
            "scaling {}/{}: {} at {work} {}",
            index + 1,
            sizes.len(),
            scenario.name(),
            work_unit(scenario)
        );
        let run_options = run_options(options, scenario, work, connections, &scaling_dir);
        let point = match crate::ws::run(scenario, &run_options).await {
            Ok(result) => {
                eprintln!("{}", crate::result::summary(&result));
                ScalingPoint::of(scenario, work, connections, &result)
            }
            Err(error) => {
                eprintln!("scaling: {} at {work} failed: {error:#}", scenario.name());
                ScalingPoint::failed(scenario, work, connections, &error)
            }
        };
        points.push(point);
        // Let the stopped deployment's sockets and the machine's load settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    machine.load_at_end = crate::report::load_average();
    let result_path = options.out_dir.join("scaling.json");
    let plot_path = options.out_dir.join("scaling.svg");
    let result = ScalingResult {
        scenario: "scaling",
        machine,
        seconds: started.elapsed().as_secs_f64(),
        points,
        result_file: result_path.display().to_string(),
        plot_file: plot_path.display().to_string(),
    };
    plot(&plot_path, &result.points)?;
    std::fs::write(&result_path, serde_json::to_vec_pretty(&result)?)
        .with_context(|| format!("writing {}", result_path.display()))?;
    Ok(result)
}

/// The options of one size's run.
fn run_options(
    options: &ScalingOptions,
    scenario: Scenario,
    work: u64,
    connections: u64,
    scaling_dir: &Path,
) -> WsBenchOptions {
    let steady = scenario == Scenario::Steady;
    WsBenchOptions {
        connections: Some(connections),
        workers: None,
        protocol: None,
        duration_seconds: steady.then_some(options.steady_seconds),
        rate: steady.then_some(work),
        messages: options.messages,
        events: false,
        data_bytes: None,
        recipients_per_event: None,
        edges: None,
        partitions: options.partitions,
        connect_concurrency: 256,
        local_brokers: options.local_brokers.clone(),
        kafka_client: options.kafka_client.clone(),
        ceiling: None,
        out_dir: scaling_dir.join(format!("{}-{work}", scenario.name())),
        external: ExternalTarget::default(),
        seed: 1,
    }
}

/// One line per size.
pub fn summary(result: &ScalingResult) -> String {
    let mut lines = vec![format!(
        "fanout bench scaling: {} sizes in {:.0} s",
        result.points.len(),
        result.seconds
    )];
    for point in &result.points {
        if let Some(error) = &point.error {
            lines.push(format!(
                "{} {} {}: failed: {error}",
                point.scenario, point.work, point.work_unit
            ));
            continue;
        }
        let cpu = point.cpu.per_event.as_ref().map_or_else(
            || "?".to_owned(),
            |per_event| format!("CPU µs per {}: {}", per_event.unit, per_event.line()),
        );
        lines.push(format!(
            "{} {} {}: p50 {:.1} ms, p99 {:.1} ms; delivered {} of {}; {cpu}",
            point.scenario,
            point.work,
            point.work_unit,
            point.latency_p50_ms,
            point.latency_p99_ms,
            point.delivered,
            point
                .expected
                .map_or_else(|| "?".to_owned(), |expected| expected.to_string()),
        ));
    }
    lines.push(format!(
        "wrote {} and {}",
        result.result_file, result.plot_file
    ));
    lines.join("\n")
}

/// The processes of a point's CPU per event, named, and the total.
fn cpu_series(point: &ScalingPoint) -> Vec<(&'static str, f64)> {
    let Some(per_event) = &point.cpu.per_event else {
        return Vec::new();
    };
    let mut series = vec![("edge", per_event.edges_us.iter().sum())];
    if let Some(ingest) = per_event.ingest_us {
        series.push(("ingest", ingest));
    }
    if let Some(router) = per_event.router_us {
        series.push(("router", router));
    }
    series.push(("bench + Kafka", per_event.bench_and_kafka_us));
    series.push(("clients", per_event.clients_us));
    series.push(("total", per_event.total_us));
    series
}

/// Writes the plot: for each series, p50 and p99 latency (log scale) and CPU
/// microseconds per user event of each process, against the size.
fn plot(path: &Path, points: &[ScalingPoint]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE).context("drawing the plot")?;
    let panels = root.split_evenly((2, 2));
    for (row, scenario) in [Scenario::GroupMessage, Scenario::Steady]
        .into_iter()
        .enumerate()
    {
        let series: Vec<&ScalingPoint> = points
            .iter()
            .filter(|point| point.scenario == scenario.name() && point.error.is_none())
            .collect();
        plot_latency_panel(&panels[row * 2], scenario, &series)?;
        plot_cpu_panel(&panels[row * 2 + 1], scenario, &series)?;
    }
    root.present().context("writing the plot")?;
    Ok(())
}

/// The x range over the points' sizes, with a margin.
fn work_range(points: &[&ScalingPoint]) -> std::ops::Range<f64> {
    let (low, high) = points
        .iter()
        .map(|point| point.work as f64)
        .fold((f64::MAX, 0.0_f64), |(low, high), work| {
            (low.min(work), high.max(work))
        });
    if points.is_empty() {
        return 0.0..1.0;
    }
    let margin = ((high - low) * 0.05).max(high * 0.05).max(1.0);
    (low - margin).max(0.0)..high + margin
}

/// 1, 2, 5, 10, 20, ... within `low..=high`, and the ends if that is fewer than two:
/// labels for a log axis, which has few of its own over a narrow range.
fn one_two_five(low: f64, high: f64) -> Vec<f64> {
    let mut points = Vec::new();
    let mut decade = 10_f64.powf(low.max(1e-3).log10().floor());
    while decade <= high {
        for step in [1.0, 2.0, 5.0] {
            let point = decade * step;
            if (low..=high).contains(&point) {
                points.push(point);
            }
        }
        decade *= 10.0;
    }
    if points.len() < 2 {
        let round = |value: f64| (value * 10.0).round() / 10.0;
        points.insert(0, round(low));
        points.push(round(high));
        points.sort_by(f64::total_cmp);
        points.dedup();
    }
    points
}

const COLORS: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];

type Panel<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn plot_latency_panel(
    panel: &Panel<'_>,
    scenario: Scenario,
    points: &[&ScalingPoint],
) -> anyhow::Result<()> {
    let latencies = |point: &&ScalingPoint| [point.latency_p50_ms, point.latency_p99_ms];
    let (lowest, highest) = points
        .iter()
        .flat_map(latencies)
        .filter(|ms| *ms > 0.0)
        .fold((f64::MAX, 0.0_f64), |(low, high), ms| {
            (low.min(ms), high.max(ms))
        });
    let (low, high) = if highest > 0.0 {
        (lowest * 0.8, highest * 1.25)
    } else {
        (0.1, 1000.0)
    };
    let mut chart = ChartBuilder::on(panel)
        .caption(
            format!("{}: produce → socket latency", scenario.name()),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            work_range(points),
            (low..high)
                .log_scale()
                .with_key_points(one_two_five(low, high)),
        )
        .context("drawing the plot")?;
    chart
        .configure_mesh()
        .x_desc(work_unit(scenario))
        .y_desc("latency (ms)")
        .x_label_formatter(&|work| format!("{work:.0}"))
        .y_label_formatter(&|ms| format!("{ms}"))
        .draw()
        .context("drawing the plot")?;
    for (index, (label, pick)) in [("p50", 0_usize), ("p99", 1_usize)].into_iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let line: Vec<(f64, f64)> = points
            .iter()
            .map(|point| (point.work as f64, latencies(point)[pick].max(low)))
            .collect();
        draw_line(&mut chart, line, label, color)?;
    }
    crate::report::draw_legend(&mut chart)
}

/// One labelled series: a line through `line`'s points and a dot on each.
fn draw_line<Y>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, Y>>,
    line: Vec<(f64, f64)>,
    label: &str,
    color: RGBColor,
) -> anyhow::Result<()>
where
    Y: Ranged<ValueType = f64>,
{
    chart
        .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
        .context("drawing the plot")?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    chart
        .draw_series(
            line.into_iter()
                .map(|point| Circle::new(point, 3, color.filled())),
        )
        .context("drawing the plot")?;
    Ok(())
}

fn plot_cpu_panel(
    panel: &Panel<'_>,
    scenario: Scenario,
    points: &[&ScalingPoint],
) -> anyhow::Result<()> {
    let highest = points
        .iter()
        .flat_map(|point| cpu_series(point).into_iter().map(|(_, us)| us))
        .fold(0.0_f64, f64::max);
    let high = if highest > 0.0 { highest * 1.15 } else { 1.0 };
    let mut chart = ChartBuilder::on(panel)
        .caption(
            format!("{}: CPU per user event", scenario.name()),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(work_range(points), 0.0..high)
        .context("drawing the plot")?;
    chart
        .configure_mesh()
        .x_desc(work_unit(scenario))
        .y_desc("CPU µs per user event")
        .x_label_formatter(&|work| format!("{work:.0}"))
        .y_label_formatter(&|us| format!("{us:.0}"))
        .draw()
        .context("drawing the plot")?;
    let names: Vec<&'static str> = points
        .first()
        .map(|point| {
            cpu_series(point)
                .into_iter()
                .map(|(name, _)| name)
                .collect()
        })
        .unwrap_or_default();
    for (index, name) in names.into_iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let line: Vec<(f64, f64)> = points
            .iter()
            .filter_map(|point| {
                cpu_series(point)
                    .into_iter()
                    .find(|(process, _)| *process == name)
                    .map(|(_, us)| (point.work as f64, us))
            })
            .collect();
        draw_line(&mut chart, line, name, color)?;
    }
    crate::report::draw_legend(&mut chart)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_axis_labels_are_one_two_five_within_the_range() {
        assert_eq!(one_two_five(12.0, 160.0), [20.0, 50.0, 100.0]);
        assert_eq!(one_two_five(0.8, 2.5), [1.0, 2.0]);
        assert_eq!(one_two_five(12.5, 44.0), [12.5, 20.0, 44.0]);
        assert_eq!(one_two_five(3.0, 4.0), [3.0, 4.0]);
    }
}
