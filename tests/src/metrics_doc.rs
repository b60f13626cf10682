//! docs/metrics.md as data, and the rules it states, for the tests that hold the
//! running code to it: every metric documented with its type and labels, names
//! `fanout_<stage>_<name>_<unit>`, labels from a bounded vocabulary.

use std::collections::{BTreeMap, BTreeSet};

/// The stages a metric name may start with.
pub const STAGES: [&str; 4] = ["ingest", "router", "edge", "api"];

/// Label names with a bounded set of values (see docs/metrics.md). A new label is added
/// here, and to the doc, deliberately.
pub const ALLOWED_LABELS: [&str; 8] = [
    "result",
    "reason",
    "protocol",
    "limit",
    "route",
    "status",
    "topic",
    "partition",
];

/// Label names that would hold unbounded or secret values.
pub const FORBIDDEN_LABELS: [&str; 9] = [
    "user",
    "user_id",
    "token",
    "jti",
    "key",
    "partner",
    "conversation",
    "peer",
    "ip",
];

/// A metric as the table in docs/metrics.md, or an exposition, describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricShape {
    pub name: String,
    /// `counter`, `gauge` or `histogram`.
    pub kind: String,
    pub labels: BTreeSet<String>,
}

pub fn metrics_doc_text() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("reading {path}: {error}"))
}

/// The rows of the table in docs/metrics.md, by name.
pub fn documented() -> BTreeMap<String, MetricShape> {
    let mut metrics = BTreeMap::new();
    for line in metrics_doc_text().lines() {
        let Some(row) = line.strip_prefix("| `fanout_") else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert!(
            cells.len() >= 4,
            "a malformed row in docs/metrics.md: {line}"
        );
        let name = format!("fanout_{}", cells[0].trim_end_matches('`'));
        let labels = cells[2]
            .split(',')
            .map(|label| label.trim().trim_matches('`').to_owned())
            .filter(|label| !label.is_empty())
            .collect();
        let shape = MetricShape {
            name: name.clone(),
            kind: cells[1].to_owned(),
            labels,
        };
        assert!(
            metrics.insert(name.clone(), shape).is_none(),
            "{name} is in docs/metrics.md twice"
        );
    }
    metrics
}

/// Why `name` breaks the naming rule for a metric of `kind`, if it does.
pub fn naming_problem(name: &str, kind: &str) -> Option<String> {
    let Some(rest) = name.strip_prefix("fanout_") else {
        return Some(format!("{name}: does not start with fanout_"));
    };
    if !name
        .bytes()
        .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
    {
        return Some(format!("{name}: not snake_case"));
    }
    let Some((stage, rest)) = rest.split_once('_') else {
        return Some(format!("{name}: no stage"));
    };
    if !STAGES.contains(&stage) {
        return Some(format!("{name}: {stage} is not a stage ({STAGES:?})"));
    }
    // A gauge counting things may be just its plural noun (`fanout_edge_connections`):
    // the noun is the unit and says what it is.
    let (what, unit) = rest.rsplit_once('_').unwrap_or(("", rest));
    if what.is_empty() && !(kind == "gauge" && unit.ends_with('s')) {
        return Some(format!("{name}: needs <name>_<unit> after the stage"));
    }
    let sized = unit == "seconds" || unit == "bytes";
    let ok = match kind {
        "counter" => unit == "total",
        "histogram" => sized,
        "gauge" => unit != "total" && (sized || unit.ends_with('s')),
        other => return Some(format!("{name}: unexpected type {other}")),
    };
    (!ok).then(|| {
        format!(
            "{name}: a {kind} must end in {}",
            match kind {
                "counter" => "_total",
                "histogram" => "_seconds or _bytes",
                _ => "_seconds, _bytes or the plural noun it counts (not _total)",
            }
        )
    })
}

/// Why `label` may not be a label, if it may not.
pub fn label_problem(metric: &str, label: &str) -> Option<String> {
    if FORBIDDEN_LABELS.contains(&label) {
        return Some(format!(
            "{metric}: label {label} would hold unbounded or secret values"
        ));
    }
    (!ALLOWED_LABELS.contains(&label)).then(|| {
        format!("{metric}: label {label} is not one of the bounded labels {ALLOWED_LABELS:?}")
    })
}

/// The metric families of a Prometheus text exposition, with the label names their
/// samples carry (`le` of histogram buckets left out).
pub fn parse_exposition(text: &str) -> BTreeMap<String, MetricShape> {
    let mut families: BTreeMap<String, MetricShape> = BTreeMap::new();
    for line in text.lines() {
        if let Some(declaration) = line.strip_prefix("# TYPE ") {
            let (name, kind) = declaration.split_once(' ').unwrap_or((declaration, ""));
            families.insert(
                name.to_owned(),
                MetricShape {
                    name: name.to_owned(),
                    kind: kind.to_owned(),
                    labels: BTreeSet::new(),
                },
            );
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let sample = line.split(' ').next().unwrap_or_default();
        let (sample_name, labels) = match sample.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (sample, ""),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                sample_name
                    .strip_suffix(suffix)
                    .filter(|base| families.get(*base).is_some_and(|f| f.kind == "histogram"))
            })
            .unwrap_or(sample_name);
        let Some(shape) = families.get_mut(family) else {
            panic!("a sample with no # TYPE: {line}");
        };
        for pair in labels.split("\",").filter(|pair| !pair.is_empty()) {
            if let Some((label, _)) = pair.split_once('=')
                && label != "le"
            {
                shape.labels.insert(label.to_owned());
            }
        }
    }
    families
}

/// What is wrong with `families` (from an exposition) against docs/metrics.md and its
/// rules: one line per problem.
pub fn problems(families: &BTreeMap<String, MetricShape>) -> Vec<String> {
    let documented = documented();
    let mut problems = Vec::new();
    for family in families.values() {
        problems.extend(naming_problem(&family.name, &family.kind));
        for label in &family.labels {
            problems.extend(label_problem(&family.name, label));
        }
        match documented.get(&family.name) {
            None => problems.push(format!("{}: not in docs/metrics.md", family.name)),
            Some(doc) if doc.kind != family.kind => problems.push(format!(
                "{}: a {} in docs/metrics.md, a {} in the code",
                family.name, doc.kind, family.kind
            )),
            // A family is exposed only once it has a series, and each series carries
            // every label of its family.
            Some(doc) if family.labels != doc.labels => problems.push(format!(
                "{}: labels {:?} in the code, {:?} in docs/metrics.md",
                family.name, family.labels, doc.labels
            )),
            Some(_) => {}
        }
    }
    problems
}
