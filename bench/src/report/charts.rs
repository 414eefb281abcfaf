//! The report's PNG charts, drawn with plotters' bitmap backend.

use std::error::Error;
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

use super::{Chart, ReportError};

/// The font of all chart text, from the Debian package `fonts-dejavu-core`: read at runtime
/// rather than linked in, and not looked up through fontconfig, so that the bench builds
/// without system libraries.
const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// plotters' name for the family every text style below uses.
const FONT_FAMILY: &str = "sans-serif";
/// Wide enough for a legend beside the data, small enough for a Markdown page.
const SIZE: (u32, u32) = (900, 500);
/// Series colours (Tableau 10): distinct from each other and readable on white, unlike
/// plotters' own palette, whose third colour is a pale yellow.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
/// Latencies are drawn on a log scale, which has no zero: shorter ones are drawn at 1 µs.
const MIN_MS: f64 = 0.001;
/// Points per latency curve: enough for a smooth curve, few enough for a quick chart from
/// millions of requests.
const CDF_POINTS: usize = 2000;

type Drawn = Result<(), Box<dyn Error>>;

/// Registers the font with plotters, once per process.
pub(super) fn register_font() -> Result<(), ReportError> {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    if REGISTERED.get().is_some() {
        return Ok(());
    }
    let path = Path::new(FONT_PATH);
    let bytes = std::fs::read(path).map_err(|source| ReportError::FontMissing {
        path: path.to_owned(),
        source,
    })?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, bytes).map_err(|_| {
        ReportError::BadFont {
            path: path.to_owned(),
        }
    })?;
    let _ = REGISTERED.set(());
    Ok(())
}

/// Draws `chart` into the PNG file `path`.
pub(super) fn draw(chart: &Chart, path: &Path) -> Result<(), ReportError> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    let drawn = match chart {
        Chart::LatencyCdf { title, series, .. } => latency_cdf(&root, title, series),
        Chart::Lines {
            title,
            x_label,
            y_label,
            series,
            ..
        } => lines(&root, title, x_label, y_label, series),
        Chart::Bars {
            title,
            y_label,
            bars: values,
            ..
        } => bars(&root, title, y_label, values),
    };
    drawn
        .and_then(|()| Ok(root.present()?))
        .map_err(|error| ReportError::Chart {
            path: path.to_owned(),
            message: error.to_string(),
        })
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn latency_cdf(root: &Area, title: &str, series: &[(String, Vec<Duration>)]) -> Drawn {
    let curves: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(name, values)| (name.as_str(), cdf(values)))
        .collect();
    let (low, high) = curves
        .iter()
        .flat_map(|(_, points)| points.iter().map(|&(x, _)| x))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), x| {
            (low.min(x), high.max(x))
        });
    let x_range = if low.is_finite() {
        (low / 1.5).max(MIN_MS)..high * 1.5
    } else {
        0.1..1.0
    };
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT_FAMILY, 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(x_range.log_scale(), 0.0..100.0)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("requests at or below (%)")
        .x_labels(20)
        .x_label_formatter(&|&x| axis_number(x))
        .y_label_formatter(&|&y| axis_number(y))
        .label_style((FONT_FAMILY, 14))
        .draw()?;
    for (index, (name, points)) in curves.into_iter().enumerate() {
        let color = PALETTE[index % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

/// The cumulative distribution of `values` in milliseconds: `(latency, % at or below)`, thinned
/// to about `CDF_POINTS` points but always keeping the maximum.
fn cdf(values: &[Duration]) -> Vec<(f64, f64)> {
    let mut millis: Vec<f64> = values
        .iter()
        .map(|value| (value.as_secs_f64() * 1e3).max(MIN_MS))
        .collect();
    millis.sort_by(f64::total_cmp);
    let count = millis.len();
    let step = count.div_ceil(CDF_POINTS).max(1);
    let percent = |index: usize| 100.0 * (index + 1) as f64 / count as f64;
    let mut points: Vec<(f64, f64)> = (0..count)
        .step_by(step)
        .map(|index| (millis[index], percent(index)))
        .collect();
    if count > 0 && (count - 1) % step != 0 {
        points.push((millis[count - 1], 100.0));
    }
    points
}

fn lines(
    root: &Area,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Drawn {
    let finite = |&&(x, y): &&(f64, f64)| x.is_finite() && y.is_finite();
    let points = || {
        series
            .iter()
            .flat_map(|(_, points)| points.iter().filter(finite))
    };
    let x_range = padded(points().map(|&(x, _)| x), false);
    let y_range = padded(points().map(|&(_, y)| y), true);
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT_FAMILY, 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range, y_range)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|&x| axis_number(x))
        .y_label_formatter(&|&y| axis_number(y))
        .label_style((FONT_FAMILY, 14))
        .draw()?;
    for (index, (name, points)) in series.iter().enumerate() {
        let color = PALETTE[index % PALETTE.len()];
        let points: Vec<(f64, f64)> = points.iter().filter(finite).copied().collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(
            points
                .into_iter()
                .map(|point| Circle::new(point, 3, color.filled())),
        )?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

fn bars(root: &Area, title: &str, y_label: &str, bars: &[(String, f64)]) -> Drawn {
    let height = |value: f64| if value.is_finite() { value } else { 0.0 };
    let y_range = padded(bars.iter().map(|&(_, value)| height(value)), true);
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT_FAMILY, 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        // A discrete integer range includes its end: `0..n - 1` is n segments.
        .build_cartesian_2d((0..bars.len().saturating_sub(1)).into_segmented(), y_range)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len().max(1))
        .x_label_formatter(&|segment| match segment {
            SegmentValue::CenterOf(index) | SegmentValue::Exact(index) => bars
                .get(*index)
                .map_or_else(String::new, |(name, _)| name.clone()),
            SegmentValue::Last => String::new(),
        })
        .y_desc(y_label)
        .y_label_formatter(&|&y| axis_number(y))
        .label_style((FONT_FAMILY, 14))
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(index, (_, value))| {
        let color = PALETTE[index % PALETTE.len()];
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(index), 0.0),
                (SegmentValue::Exact(index + 1), height(*value)),
            ],
            color.filled(),
        );
        bar.set_margin(0, 0, 12, 12);
        bar
    }))?;
    // Each bar's value above it, so that the chart reads without the table.
    let value_style = TextStyle::from((FONT_FAMILY, 14)).pos(Pos::new(HPos::Center, VPos::Bottom));
    chart.draw_series(bars.iter().enumerate().map(|(index, (_, value))| {
        Text::new(
            axis_number(*value),
            (SegmentValue::CenterOf(index), height(*value)),
            value_style.clone(),
        )
    }))?;
    Ok(())
}

fn legend<'a, X, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
) -> Drawn
where
    X: Ranged,
    Y: Ranged,
{
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FONT_FAMILY, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// A range covering `values` with a margin, from zero if `from_zero` and the values are not
/// negative; a unit range when there is nothing to show, since plotters needs a non-empty one.
fn padded(values: impl Iterator<Item = f64>, from_zero: bool) -> Range<f64> {
    let (low, high) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), value| {
        (low.min(value), high.max(value))
    });
    if !low.is_finite() {
        return 0.0..1.0;
    }
    let low = if from_zero { low.min(0.0) } else { low };
    let margin = if high > low {
        (high - low) * 0.08
    } else {
        high.abs().max(1.0) * 0.5
    };
    let start = if from_zero && low >= 0.0 {
        0.0
    } else {
        low - margin
    };
    start..high + margin
}

/// An axis label with at most three decimals and no trailing zeros: `0.05`, `2.5`, `1000`.
fn axis_number(value: f64) -> String {
    let text = if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}
