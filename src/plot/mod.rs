//! SVG charts of the experiments' and benchmarks' results, written next to
//! `docs/results.md` (plotters' SVG backend: no fonts or image libraries needed).

use std::path::Path;

use anyhow::anyhow;
use plotters::coord::ranged1d::{IntoSegmentedCoord, SegmentValue};
use plotters::prelude::*;

/// One point of a line: a mean with the spread around it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Where on the x axis.
    pub x: f64,
    /// The mean, drawn as the line.
    pub mean: f64,
    /// The bottom of the spread (the lowest seed).
    pub low: f64,
    /// The top of the spread (the highest seed).
    pub high: f64,
}

/// A named line of points, or a named row of bars.
#[derive(Debug, Clone, PartialEq)]
pub struct Series<T> {
    /// The legend's name.
    pub name: String,
    /// The points (lines) or one value per group (bars).
    pub values: Vec<T>,
}

/// One panel of a line chart.
#[derive(Debug, Clone)]
pub struct Panel {
    /// The panel's title.
    pub title: String,
    /// Its lines.
    pub series: Vec<Series<Point>>,
}

/// Size of one panel in pixels.
const PANEL: (u32, u32) = (480, 360);

fn failed<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> anyhow::Error + '_ {
    move |e| anyhow!("drawing {}: {e}", path.display())
}

/// A tick label with a decimal where the axis spans less than 10, so that ticks half a
/// unit apart do not read alike.
fn tick(value: f64, span: f64) -> String {
    if span < 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

/// Line charts side by side on one y scale, each line with error bars from `low` to
/// `high`.
///
/// # Errors
/// When the file cannot be written.
pub fn lines(path: &Path, panels: &[Panel], x_label: &str, y_label: &str) -> anyhow::Result<()> {
    let failed = failed(path);
    let points = || {
        panels
            .iter()
            .flat_map(|p| &p.series)
            .flat_map(|s| &s.values)
    };
    let bottom = points().map(|p| p.low).fold(f64::MAX, f64::min);
    let top = points().map(|p| p.high).fold(f64::MIN, f64::max);
    let margin = ((top - bottom) * 0.1).max(1.0);
    let y_range = (bottom - margin)..(top + margin);
    let size = (PANEL.0 * panels.len().max(1) as u32, PANEL.1);
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(&failed)?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (panel, area) in panels.iter().zip(&areas) {
        let xs = panel
            .series
            .iter()
            .flat_map(|s| s.values.iter().map(|p| p.x));
        let (low, high) = xs.fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(x), h.max(x)));
        let pad = ((high - low) * 0.08).max(1.0);
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((low - pad)..(high + pad), y_range.clone())
            .map_err(&failed)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| tick(*y, y_range.end - y_range.start))
            .light_line_style(WHITE)
            .draw()
            .map_err(&failed)?;
        for (i, series) in panel.series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points = &series.values;
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|p| (p.x, p.mean)),
                    color.stroke_width(2),
                ))
                .map_err(&failed)?
                .label(series.name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|p| {
                    ErrorBar::new_vertical(p.x, p.low, p.mean, p.high, color.stroke_width(1), 8)
                }))
                .map_err(&failed)?;
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|p| Circle::new((p.x, p.mean), 3, color.filled())),
                )
                .map_err(&failed)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .border_style(BLACK.mix(0.3))
            .background_style(WHITE.mix(0.9))
            .draw()
            .map_err(&failed)?;
    }
    root.present().map_err(&failed)?;
    Ok(())
}

/// Grouped bars: one group per entry of `groups`, one bar per series in each group.
///
/// # Errors
/// When the file cannot be written, or a series has not one value per group.
pub fn bars(
    path: &Path,
    title: &str,
    groups: &[String],
    series: &[Series<f64>],
    y_label: &str,
) -> anyhow::Result<()> {
    if let Some(bad) = series.iter().find(|s| s.values.len() != groups.len()) {
        return Err(anyhow!(
            "{}: {} values for {} groups",
            bad.name,
            bad.values.len(),
            groups.len()
        ));
    }
    let failed = failed(path);
    let top = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .fold(0.0_f64, f64::max);
    let root = SVGBackend::new(path, (PANEL.0 * 2, PANEL.1 + 40)).into_drawing_area();
    root.fill(&WHITE).map_err(&failed)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(
            (0..groups.len()).into_segmented(),
            0.0..(top * 1.15).max(1.0),
        )
        .map_err(&failed)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        // Group names are drawn centred below their bars instead.
        .x_label_formatter(&|_| String::new())
        .light_line_style(WHITE)
        .y_desc(y_label)
        .y_label_formatter(&|y| tick(*y, top))
        .draw()
        .map_err(&failed)?;
    // Each group's segment is split among its bars, with a margin on both sides.
    let width = 0.8 / series.len().max(1) as f64;
    let plot = chart.plotting_area();
    let (pixels_x, _) = plot.get_pixel_range();
    let segment = (pixels_x.end - pixels_x.start) as f64 / groups.len().max(1) as f64;
    let (_, axis) = plot.map_coordinate(&(SegmentValue::CenterOf(0), 0.0));
    for (group, name) in groups.iter().enumerate() {
        // The naive font is about 0.55 of its size wide per character.
        let center = pixels_x.start as f64 + segment * (group as f64 + 0.5);
        let half = name.chars().count() as f64 * 13.0 * 0.55 / 2.0;
        root.draw(&Text::new(
            name.clone(),
            ((center - half) as i32, axis + 8),
            ("sans-serif", 13),
        ))
        .map_err(&failed)?;
    }
    for (i, series_i) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        for (group, &value) in series_i.values.iter().enumerate() {
            let left = pixels_x.start as f64 + segment * (group as f64 + 0.1 + width * i as f64);
            let right = left + segment * width * 0.92;
            let (_, bottom) = plot.map_coordinate(&(SegmentValue::CenterOf(group), 0.0));
            let (_, height) = plot.map_coordinate(&(SegmentValue::CenterOf(group), value));
            root.draw(&Rectangle::new(
                [(left as i32, height), (right as i32, bottom)],
                color.filled(),
            ))
            .map_err(&failed)?;
            root.draw(&Text::new(
                format!("{value:.1}"),
                ((left as i32) + 2, height - 14),
                ("sans-serif", 11),
            ))
            .map_err(&failed)?;
        }
        root.draw(&Rectangle::new(
            [
                (pixels_x.start + 10 + 130 * i as i32, PANEL.1 as i32 + 18),
                (pixels_x.start + 22 + 130 * i as i32, PANEL.1 as i32 + 30),
            ],
            color.filled(),
        ))
        .map_err(&failed)?;
        root.draw(&Text::new(
            series_i.name.clone(),
            (pixels_x.start + 26 + 130 * i as i32, PANEL.1 as i32 + 17),
            ("sans-serif", 13),
        ))
        .map_err(&failed)?;
    }
    root.present().map_err(&failed)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svg(draw: impl FnOnce(&Path) -> anyhow::Result<()>) -> String {
        let file = tempfile::Builder::new().suffix(".svg").tempfile().unwrap();
        draw(file.path()).unwrap();
        std::fs::read_to_string(file.path()).unwrap()
    }

    #[test]
    fn bars_carry_their_groups_series_and_values() {
        let groups = ["SST-2".to_owned(), "TREC".to_owned()];
        let series = [
            Series {
                name: "LLM alone".to_owned(),
                values: vec![79.5, 58.0],
            },
            Series {
                name: "vote alone".to_owned(),
                values: vec![69.0, 67.25],
            },
        ];
        let text = svg(|path| bars(path, "accuracy", &groups, &series, "%"));
        for expected in [
            "SST-2",
            "TREC",
            "LLM alone",
            "vote alone",
            "79.5",
            "58.0",
            "67.2",
        ] {
            assert!(text.contains(expected), "{expected} is not drawn");
        }
        // One filled bar per value and one legend swatch per series, beside the frame.
        let filled = text.matches("<rect").count();
        assert!(filled >= 4 + 2, "{filled} rectangles");
    }

    #[test]
    fn ticks_of_a_short_axis_keep_a_decimal() {
        assert_eq!(tick(2.5, 4.0), "2.5");
        assert_eq!(tick(2.0, 4.0), "2.0");
        assert_eq!(tick(70.0, 80.0), "70");
    }

    #[test]
    fn bars_refuse_a_series_without_one_value_per_group() {
        let series = [Series {
            name: "short".to_owned(),
            values: vec![1.0],
        }];
        let file = tempfile::Builder::new().suffix(".svg").tempfile().unwrap();
        let error = bars(file.path(), "t", &["a".into(), "b".into()], &series, "y").unwrap_err();
        assert_eq!(error.to_string(), "short: 1 values for 2 groups");
    }

    #[test]
    fn lines_draw_every_panel_and_series() {
        let point = |x: f64, mean: f64| Point {
            x,
            mean,
            low: mean - 5.0,
            high: mean + 5.0,
        };
        let panels = [
            Panel {
                title: "SST-2".to_owned(),
                series: vec![Series {
                    name: "ideal".to_owned(),
                    values: vec![point(18.0, 69.7), point(100.0, 67.7)],
                }],
            },
            Panel {
                title: "TREC".to_owned(),
                series: vec![Series {
                    name: "ideal".to_owned(),
                    values: vec![point(18.0, 43.3), point(100.0, 60.3)],
                }],
            },
        ];
        let text = svg(|path| lines(path, &panels, "budget", "accuracy"));
        for expected in ["SST-2", "TREC", "ideal", "budget", "accuracy"] {
            assert!(text.contains(expected), "{expected} is not drawn");
        }
        assert!(text.contains("width=\"960\""), "two panels side by side");
    }
}
