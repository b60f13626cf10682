//! A run's result: latency percentiles from an HDR histogram, the machine it ran on,
//! and the latency distribution as an SVG plot.

use std::path::Path;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::Serialize;

/// Percentiles of a latency histogram recorded in microseconds, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencySummary {
    pub samples: u64,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl LatencySummary {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if histogram.is_empty() {
            return Self::default();
        }
        Self {
            samples: histogram.len(),
            min_ms: ms(histogram.min()),
            p50_ms: ms(histogram.value_at_quantile(0.5)),
            p90_ms: ms(histogram.value_at_quantile(0.9)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
            mean_ms: histogram.mean() / 1000.0,
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{} samples: min {:.2} ms, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            self.samples,
            self.min_ms,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms
        )
    }
}

/// The machine a run measured, and how busy it was.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    /// /proc/loadavg's 1-minute figure at the start and the end of the run.
    pub load_at_start: f64,
    pub load_at_end: f64,
}

impl Machine {
    pub fn read() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_default();
        let memory_kib = super::system::kib_field(&read("/proc/meminfo"), "MemTotal:")
            .map_or(0.0, |kib| kib as f64);
        Self {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model,
            memory_gib: (memory_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            load_at_start: load_average(),
            load_at_end: 0.0,
        }
    }
}

pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Percentiles the plot marks on its x axis, as "nines": x = log10(1 / (1 - p)).
const MARKS: [(f64, &str); 6] = [
    (0.0, "0%"),
    (1.0, "90%"),
    (2.0, "99%"),
    (3.0, "99.9%"),
    (4.0, "99.99%"),
    (5.0, "99.999%"),
];

/// Writes the latency-by-percentile curve of each `(label, histogram)` to `path`, in
/// the usual HDR form: percentile on a "nines" axis, latency in ms on a log axis.
pub fn plot_latency(
    path: &Path,
    title: &str,
    series: &[(&str, &Histogram<u64>)],
) -> anyhow::Result<()> {
    let mut curves: Vec<(&str, Vec<(f64, f64)>)> = Vec::new();
    for (label, histogram) in series {
        if histogram.is_empty() {
            continue;
        }
        let mut points = Vec::new();
        let mut nines = 0.0_f64;
        while nines <= 5.0 {
            let quantile = 1.0 - 10_f64.powf(-nines);
            let value_ms = histogram.value_at_quantile(quantile) as f64 / 1000.0;
            points.push((nines, value_ms.max(0.001)));
            nines += 0.02;
        }
        points.push((5.0, (histogram.max() as f64 / 1000.0).max(0.001)));
        curves.push((label, points));
    }
    let max_nines = series
        .iter()
        .map(|(_, histogram)| (histogram.len().max(1) as f64).log10().clamp(1.0, 5.0))
        .fold(1.0_f64, f64::max);
    let (low, high) = curves
        .iter()
        .flat_map(|(_, points)| points.iter().map(|(_, value)| *value))
        .fold((f64::MAX, 0.0_f64), |(low, high), value| {
            (low.min(value), high.max(value))
        });
    let (low, high) = if curves.is_empty() {
        (0.001, 1.0)
    } else {
        (low * 0.8, high * 1.25)
    };
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).context("drawing the plot")?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..max_nines, (low..high).log_scale())
        .context("drawing the plot")?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(6)
        .x_label_formatter(&|nines| {
            MARKS
                .iter()
                .find(|(mark, _)| (mark - nines).abs() < 0.01)
                .map_or_else(String::new, |(_, label)| (*label).to_owned())
        })
        .y_label_formatter(&|ms| format!("{ms:.3}"))
        .draw()
        .context("drawing the plot")?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (index, (label, points)) in curves.into_iter().enumerate() {
        let color = colors[index % colors.len()];
        let visible: Vec<(f64, f64)> = points
            .into_iter()
            .filter(|(nines, _)| *nines <= max_nines)
            .collect();
        chart
            .draw_series(LineSeries::new(visible, color.stroke_width(2)))
            .context("drawing the plot")?
            .label(label.to_owned())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    draw_legend(&mut chart)?;
    root.present().context("writing the plot")?;
    Ok(())
}

/// A chart's series labels, in its upper left corner.
pub(crate) fn draw_legend<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
) -> anyhow::Result<()>
where
    X: Ranged,
    Y: Ranged,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .context("drawing the plot")?;
    Ok(())
}
