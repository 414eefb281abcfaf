//! The benchmark report: a Markdown file with tables, and a PNG per chart next to it, so that
//! it reads as is on GitHub and in any Markdown viewer.

mod charts;
mod markdown;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A Markdown table; short rows are padded with empty cells.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    /// Header cells.
    pub columns: Vec<String>,
    /// Body rows, e.g. one per system under test.
    pub rows: Vec<Vec<String>>,
}

/// A chart, drawn as `<file_stem>.png` next to the Markdown.
#[derive(Debug, Clone, PartialEq)]
pub enum Chart {
    /// Latency distributions: for each series (e.g. a system), the percentage of requests at or
    /// below each latency, on a logarithmic millisecond axis so that sub-millisecond overheads
    /// and multi-second tails fit on one chart.
    LatencyCdf {
        /// Chart caption.
        title: String,
        /// File name without `.png`: letters, digits, `-`, `_` and `.`, unique in the report.
        file_stem: String,
        /// Name and latencies of each series.
        series: Vec<(String, Vec<Duration>)>,
    },
    /// Lines through points, e.g. achieved against offered rate.
    Lines {
        /// Chart caption.
        title: String,
        /// File name without `.png`, as for [`Chart::LatencyCdf`].
        file_stem: String,
        /// Horizontal axis description.
        x_label: String,
        /// Vertical axis description.
        y_label: String,
        /// Name and `(x, y)` points of each series.
        series: Vec<(String, Vec<(f64, f64)>)>,
    },
    /// One bar per name, e.g. a number per system.
    Bars {
        /// Chart caption.
        title: String,
        /// File name without `.png`, as for [`Chart::LatencyCdf`].
        file_stem: String,
        /// Vertical axis description.
        y_label: String,
        /// Name and height of each bar.
        bars: Vec<(String, f64)>,
    },
}

impl Chart {
    fn title(&self) -> &str {
        match self {
            Chart::LatencyCdf { title, .. }
            | Chart::Lines { title, .. }
            | Chart::Bars { title, .. } => title,
        }
    }

    fn file_stem(&self) -> &str {
        match self {
            Chart::LatencyCdf { file_stem, .. }
            | Chart::Lines { file_stem, .. }
            | Chart::Bars { file_stem, .. } => file_stem,
        }
    }
}

/// One part of the report, e.g. one workload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Section {
    /// Second-level heading.
    pub heading: String,
    /// Markdown shown under the heading: what was measured and how to read it.
    pub text: String,
    /// Tables, in order, after the text.
    pub tables: Vec<Table>,
    /// Charts, in order, after the tables.
    pub charts: Vec<Chart>,
}

/// The whole report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// First-level heading.
    pub title: String,
    /// Markdown before the first section: the machine, the versions, the method.
    pub preamble: String,
    /// The sections, in order.
    pub sections: Vec<Section>,
}

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Chart text is drawn with a TTF read at runtime, not one linked into the binary.
    #[error(
        "cannot read the charts' font {path}: {source}; install the Debian package \
         fonts-dejavu-core (bench/setup does)"
    )]
    FontMissing {
        /// Where the font was expected.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The font file is not a font plotters can use.
    #[error(
        "{path} is not a usable TrueType font; reinstall the Debian package fonts-dejavu-core"
    )]
    BadFont {
        /// The font file.
        path: PathBuf,
    },
    /// A chart's file name would leave the report directory, or collide with another chart's.
    #[error("chart file stem {stem:?} {reason}")]
    FileStem {
        /// The offending stem.
        stem: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Writing a file or creating the directory failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// plotters could not draw or save a chart.
    #[error("cannot draw chart {path}: {message}")]
    Chart {
        /// The PNG file.
        path: PathBuf,
        /// plotters' error.
        message: String,
    },
}

impl Report {
    /// Writes `dir/README.md` and a `dir/<file_stem>.png` per chart (creating `dir` if
    /// needed) and returns the Markdown's path. The stems are checked before anything is
    /// written, so that a bad report leaves no half-written directory behind.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, ReportError> {
        let charts: Vec<&Chart> = self
            .sections
            .iter()
            .flat_map(|section| &section.charts)
            .collect();
        check_file_stems(&charts)?;
        std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
            path: dir.to_owned(),
            source,
        })?;
        if !charts.is_empty() {
            charts::register_font()?;
        }
        for chart in charts {
            charts::draw(chart, &dir.join(format!("{}.png", chart.file_stem())))?;
        }
        let path = dir.join("README.md");
        std::fs::write(&path, markdown::render(self)).map_err(|source| ReportError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }
}

fn check_file_stems(charts: &[&Chart]) -> Result<(), ReportError> {
    let mut seen = HashSet::new();
    for chart in charts {
        let stem = chart.file_stem();
        let error = |reason| ReportError::FileStem {
            stem: stem.to_owned(),
            reason,
        };
        let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if stem.is_empty() || stem.starts_with('.') || !stem.chars().all(safe) {
            return Err(error(
                "must be letters, digits, '-', '_' and '.', not starting with '.'",
            ));
        }
        if !seen.insert(stem) {
            return Err(error("is used by two charts"));
        }
    }
    Ok(())
}

/// `value` as a multiple of `reference`, e.g. `1.23×`; `—` when there is nothing to compare
/// with (a zero, missing or non-finite reference), so a table never shows `inf` or `NaN`.
pub fn ratio(value: f64, reference: f64) -> String {
    if reference == 0.0 || !reference.is_finite() || !value.is_finite() {
        return "—".to_owned();
    }
    format!("{:.2}×", value / reference)
}

/// A duration with three significant digits in the unit a reader expects: `0.042 ms`,
/// `0.42 ms`, `4.20 ms`, `12.3 ms`, `123 ms`, `1.25 s`.
pub fn ms(d: Duration) -> String {
    let millis = d.as_secs_f64() * 1e3;
    match millis {
        m if m < 0.1 => format!("{m:.3} ms"),
        m if m < 10.0 => format!("{m:.2} ms"),
        m if m < 100.0 => format!("{m:.1} ms"),
        m if m < 1000.0 => format!("{m:.0} ms"),
        m if m < 10_000.0 => format!("{:.2} s", m / 1e3),
        m if m < 100_000.0 => format!("{:.1} s", m / 1e3),
        m => format!("{:.0} s", m / 1e3),
    }
}
