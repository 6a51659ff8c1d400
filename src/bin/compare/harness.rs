//! Measurement plumbing of the `compare` binary: subjects sampled alternately in rounds, rows that
//! pair one of our figures with an anchor figure, targets, and the table / JSON output.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Instant;

/// Unit of a figure (what the numbers of a row mean).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Nanoseconds per operation (lower is better).
    Ns,
    /// Microseconds per operation (lower is better).
    Us,
    /// Millions of operations per second (higher is better).
    Mps,
    /// A dimensionless ratio (e.g. grace periods per call).
    Ratio,
}

impl Unit {
    fn suffix(self) -> &'static str {
        match self {
            Unit::Ns => " ns",
            Unit::Us => " µs",
            Unit::Mps => " M/s",
            Unit::Ratio => "",
        }
    }

    fn json_name(self) -> &'static str {
        match self {
            Unit::Ns => "ns",
            Unit::Us => "us",
            Unit::Mps => "M/s",
            Unit::Ratio => "ratio",
        }
    }
}

/// What a row must reach to count as met.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Target {
    /// Informational row.
    None,
    /// ours / anchor ≤ x.
    RatioLe(f64),
    /// ours / anchor ≥ x (rates).
    RatioGe(f64),
    /// ours ≤ x (in the row's unit).
    AbsLe(f64),
    /// ours < x (in the row's unit).
    AbsLt(f64),
}

impl Target {
    fn describe(self, unit: Unit) -> String {
        match self {
            Target::None => "—".to_owned(),
            Target::RatioLe(x) => format!("ratio ≤ {}", trim(x)),
            Target::RatioGe(x) => format!("ratio ≥ {}", trim(x)),
            Target::AbsLe(x) => format!("ours ≤ {}{}", trim(x), unit.suffix()),
            Target::AbsLt(x) => format!("ours < {}{}", trim(x), unit.suffix()),
        }
    }

    fn met(self, ours: f64, ratio: Option<f64>) -> Option<bool> {
        match self {
            Target::None => None,
            Target::RatioLe(x) => ratio.map(|r| r <= x),
            Target::RatioGe(x) => ratio.map(|r| r >= x),
            Target::AbsLe(x) => Some(ours <= x),
            Target::AbsLt(x) => Some(ours < x),
        }
    }
}

fn trim(x: f64) -> String {
    let s = format!("{x}");
    s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
}

/// Formats a value with about three significant digits.
pub(crate) fn fmt_val(v: f64, unit: Unit) -> String {
    if !v.is_finite() {
        return "n/a".to_owned();
    }
    let a = v.abs();
    let s = if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else if a >= 0.1 || a == 0.0 {
        format!("{v:.3}")
    } else if a >= 0.001 {
        format!("{v:.4}")
    } else {
        format!("{v:.2e}")
    };
    format!("{s}{}", unit.suffix())
}

/// Index of a subject's metric: (subject, metric).
pub(crate) type MetricRef = (usize, usize);

type RunFn = Box<dyn FnMut() -> Vec<f64>>;

/// One thing that is measured: ours or an anchor. Each run returns one or more metrics.
pub(crate) struct Subject {
    name: String,
    run: RunFn,
    /// `samples[metric][round]`.
    samples: Vec<Vec<f64>>,
}

/// One line of the table.
pub(crate) struct Row {
    label: String,
    unit: Unit,
    ours: MetricRef,
    anchor: Option<MetricRef>,
    target: Target,
}

/// Subjects measured together (alternately) and the rows built from them.
pub(crate) struct Group {
    id: &'static str,
    subjects: Vec<Subject>,
    rows: Vec<Row>,
}

impl Group {
    /// A group with a short id (matched by `--only`).
    pub(crate) fn new(id: &'static str) -> Self {
        Group {
            id,
            subjects: Vec::new(),
            rows: Vec::new(),
        }
    }

    /// Adds a subject returning several metrics per run.
    pub(crate) fn subject_n(
        &mut self,
        name: &str,
        run: impl FnMut() -> Vec<f64> + 'static,
    ) -> usize {
        self.subjects.push(Subject {
            name: name.to_owned(),
            run: Box::new(run),
            samples: Vec::new(),
        });
        self.subjects.len() - 1
    }

    /// Adds a subject returning one metric per run; returns its metric reference.
    pub(crate) fn subject(
        &mut self,
        name: &str,
        mut run: impl FnMut() -> f64 + 'static,
    ) -> MetricRef {
        (self.subject_n(name, move || vec![run()]), 0)
    }

    /// Adds a row comparing `ours` with `anchor` (if any).
    pub(crate) fn row(
        &mut self,
        label: &str,
        unit: Unit,
        ours: MetricRef,
        anchor: Option<MetricRef>,
        target: Target,
    ) {
        self.rows.push(Row {
            label: label.to_owned(),
            unit,
            ours,
            anchor,
            target,
        });
    }

    /// The group's id (`read1`, `sync0`, `call_rcu`, ...).
    pub(crate) fn id(&self) -> &'static str {
        self.id
    }

    /// Whether a figure label or subject name of this group contains `pat` (case-insensitive).
    pub(crate) fn mentions(&self, pat: &str) -> bool {
        let pat = pat.to_lowercase();
        self.rows
            .iter()
            .any(|r| r.label.to_lowercase().contains(&pat))
            || self
                .subjects
                .iter()
                .any(|s| s.name.to_lowercase().contains(&pat))
    }

    /// Runs `rounds` rounds; in each round every subject runs once. Even rounds go first to last,
    /// odd rounds last to first, so neither side always runs right after the other's warm caches
    /// or background work.
    pub(crate) fn run(&mut self, rounds: usize, progress: bool) {
        for r in 0..rounds {
            let k = self.subjects.len();
            for j in 0..k {
                let i = if r % 2 == 0 { j } else { k - 1 - j };
                let s = &mut self.subjects[i];
                if progress {
                    eprint!(
                        "\r[compare] {} round {}/{}: {:<40}",
                        self.id,
                        r + 1,
                        rounds,
                        s.name
                    );
                }
                let v = (s.run)();
                if s.samples.len() < v.len() {
                    s.samples.resize(v.len(), Vec::new());
                }
                for (m, x) in v.into_iter().enumerate() {
                    s.samples[m].push(x);
                }
            }
        }
        if progress {
            eprint!("\r{:<80}\r", "");
        }
    }

    fn samples(&self, m: MetricRef) -> &[f64] {
        self.subjects[m.0]
            .samples
            .get(m.1)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The results of every row (after [`Group::run`]).
    pub(crate) fn results(&self) -> Vec<RowResult> {
        self.rows
            .iter()
            .map(|r| {
                let ours = median(self.samples(r.ours));
                let anchor = r
                    .anchor
                    .map(|a| (self.subjects[a.0].name.clone(), median(self.samples(a))));
                let ratio = anchor.as_ref().map(|(_, a)| ours / a);
                RowResult {
                    group: self.id,
                    label: r.label.clone(),
                    unit: r.unit,
                    ours,
                    ours_samples: self.samples(r.ours).to_vec(),
                    anchor_name: anchor.as_ref().map(|(n, _)| n.clone()),
                    anchor: anchor.as_ref().map(|(_, a)| *a),
                    anchor_samples: r
                        .anchor
                        .map(|a| self.samples(a).to_vec())
                        .unwrap_or_default(),
                    ratio,
                    target: r.target,
                    met: r.target.met(ours, ratio),
                }
            })
            .collect()
    }
}

/// Median of the samples (NaN if none).
pub(crate) fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// One evaluated row.
pub(crate) struct RowResult {
    group: &'static str,
    label: String,
    unit: Unit,
    ours: f64,
    ours_samples: Vec<f64>,
    anchor_name: Option<String>,
    anchor: Option<f64>,
    anchor_samples: Vec<f64>,
    ratio: Option<f64>,
    target: Target,
    met: Option<bool>,
}

fn met_str(m: Option<bool>) -> &'static str {
    match m {
        None => "—",
        Some(true) => "yes",
        Some(false) => "NO",
    }
}

/// Renders the rows as an aligned text table.
pub(crate) fn table(rows: &[RowResult]) -> String {
    let header = [
        "figure",
        "ours",
        "anchor",
        "ratio (ours/anchor)",
        "target",
        "met?",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.label.clone(),
                fmt_val(r.ours, r.unit),
                match (&r.anchor_name, r.anchor) {
                    (Some(n), Some(a)) => format!("{} ({n})", fmt_val(a, r.unit)),
                    _ => "—".to_owned(),
                },
                r.ratio
                    .map(|x| fmt_val(x, Unit::Ratio))
                    .unwrap_or_else(|| "—".to_owned()),
                r.target.describe(r.unit),
                met_str(r.met).to_owned(),
            ]
        })
        .collect();
    let mut w = header.map(|h| h.chars().count());
    for c in &cells {
        for (i, s) in c.iter().enumerate() {
            w[i] = w[i].max(s.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, c: &[String]| {
        out.push('|');
        for (i, s) in c.iter().enumerate() {
            // numbers right-aligned, text left-aligned
            if i == 1 || i == 3 {
                let _ = write!(out, " {s:>width$} |", width = w[i]);
            } else {
                let _ = write!(out, " {s:<width$} |", width = w[i]);
            }
        }
        out.push('\n');
    };
    line(&mut out, &header.map(str::to_owned));
    out.push('|');
    for x in w {
        let _ = write!(out, "{}|", "-".repeat(x + 2));
    }
    out.push('\n');
    for c in &cells {
        line(&mut out, c);
    }
    out
}

/// Escapes a string for JSON.
pub(crate) fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".to_owned()
    }
}

fn json_opt(v: Option<f64>) -> String {
    v.map(json_num).unwrap_or_else(|| "null".to_owned())
}

fn json_arr(v: &[f64]) -> String {
    let parts: Vec<String> = v.iter().map(|x| json_num(*x)).collect();
    format!("[{}]", parts.join(","))
}

/// Renders the rows as a JSON array.
pub(crate) fn json_rows(rows: &[RowResult]) -> String {
    let items: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{{\"group\":{},\"figure\":{},\"unit\":{},\"ours\":{},\"ours_samples\":{},\"anchor\":{},\
                 \"anchor_value\":{},\"anchor_samples\":{},\"ratio\":{},\"target\":{},\"met\":{}}}",
                json_str(r.group),
                json_str(&r.label),
                json_str(r.unit.json_name()),
                json_num(r.ours),
                json_arr(&r.ours_samples),
                r.anchor_name.as_deref().map(json_str).unwrap_or_else(|| "null".to_owned()),
                json_opt(r.anchor),
                json_arr(&r.anchor_samples),
                json_opt(r.ratio),
                json_str(&r.target.describe(r.unit)),
                match r.met {
                    None => "null",
                    Some(true) => "true",
                    Some(false) => "false",
                },
            )
        })
        .collect();
    format!("[\n  {}\n]", items.join(",\n  "))
}

/// Runs `f` and returns the elapsed nanoseconds divided by `n`.
pub(crate) fn ns_per(n: u64, f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    black_box(t.elapsed().as_nanos() as f64 / n as f64)
}
