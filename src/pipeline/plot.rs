//! The frontier as a picture: perplexity (log scale) against parameters, one colour per
//! method, each method's frontier drawn as a line through its unbeaten points.

use anyhow::{anyhow, bail, Result};
use plotters::prelude::*;

use super::frontier::FrontierPoint;

const METHODS: [(&str, RGBColor); 9] = [
    ("dense", RGBColor(0, 0, 0)),
    ("remove", RGBColor(214, 39, 40)),
    ("svd", RGBColor(127, 127, 127)),
    ("grasp", RGBColor(31, 119, 180)),
    ("hybrid", RGBColor(44, 160, 44)),
    ("remove+recovery", RGBColor(255, 152, 150)),
    ("svd+recovery", RGBColor(199, 199, 199)),
    ("grasp+recovery", RGBColor(174, 199, 232)),
    ("hybrid+recovery", RGBColor(152, 223, 138)),
];

/// The SVG text of the plot of `points`, titled `title`.
pub fn frontier_svg(points: &[FrontierPoint], title: &str) -> Result<String> {
    if points.is_empty() {
        bail!("no points to plot");
    }
    let mut svg = String::new();
    draw(points, title, &mut svg).map_err(|e| anyhow!("cannot draw the frontier plot: {e}"))?;
    Ok(svg)
}

fn draw(
    points: &[FrontierPoint],
    title: &str,
    svg: &mut String,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let millions = |p: &FrontierPoint| p.params as f64 / 1e6;
    let (x_min, x_max) = bounds(points.iter().map(millions));
    let (y_min, y_max) = bounds(points.iter().map(|p| p.perplexity));
    let x_pad = (x_max - x_min).max(1e-3) * 0.05;
    let root = SVGBackend::with_string(svg, (960, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x_min - x_pad)..(x_max + x_pad),
            (y_min * 0.95..y_max * 1.05).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("parameters (millions)")
        .y_desc("perplexity (log scale)")
        .draw()?;
    for (method, color) in METHODS {
        let mine: Vec<&FrontierPoint> = points.iter().filter(|p| p.method == method).collect();
        if mine.is_empty() {
            continue;
        }
        let mut front: Vec<(f64, f64)> = mine
            .iter()
            .filter(|p| p.method_frontier)
            .map(|p| (millions(p), p.perplexity))
            .collect();
        front.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(front, color.stroke_width(2)))?
            .label(method)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        // Filled where no model of any method beats the point; hybrid as crosses, since it
        // coincides with GRASP wherever its guard removes nothing.
        chart.draw_series(mine.iter().map(|p| {
            let at = (millions(p), p.perplexity);
            let style = if p.on_frontier {
                color.filled()
            } else {
                color.stroke_width(1)
            };
            if method.starts_with("hybrid") {
                Cross::new(at, 6, color.stroke_width(2)).into_dyn()
            } else {
                Circle::new(at, 5, style).into_dyn()
            }
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}
