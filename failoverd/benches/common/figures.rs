//! SVG figures of what the benches measured, for docs/benchmarks.md: people would rather
//! look at a failover timeline than read one.

use std::path::Path;

use plotters::prelude::*;

/// Where the figures go: docs/figures/ in the workspace.
pub fn path(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/figures")
        .join(name)
}

/// One row per tool (or VIP): every connect attempt as a mark at its start time (ms from the
/// fault), green when it got an answer, red when it failed.
pub fn failover_timeline(
    file: &Path,
    title: &str,
    x_desc: &str,
    rows: &[(&str, Vec<(f64, bool)>)],
    window_ms: (f64, f64),
) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let height = 80 + 60 * rows.len() as u32;
    let root = SVGBackend::new(file, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(110)
        .build_cartesian_2d(window_ms.0..window_ms.1, -0.5f64..(rows.len() as f64 - 0.5))?;
    let names: Vec<String> = rows.iter().map(|(n, _)| n.to_string()).collect();
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_labels(rows.len())
        .y_label_formatter(&|y| row_label(&names, *y))
        .disable_y_mesh()
        .draw()?;
    for (row, (_, marks)) in rows.iter().enumerate() {
        let y = row as f64;
        chart.draw_series(
            marks
                .iter()
                .filter(|(t, _)| *t >= window_ms.0 && *t <= window_ms.1)
                .map(|&(t, ok)| {
                    let color = if ok { GREEN.mix(0.7) } else { RED.mix(0.9) };
                    Rectangle::new([(t - 0.4, y - 0.3), (t + 0.4, y + 0.3)], color.filled())
                }),
        )?;
    }
    chart.draw_series(LineSeries::new(
        vec![(0.0, -0.5), (0.0, rows.len() as f64 - 0.5)],
        BLACK.stroke_width(1),
    ))?;
    root.present()?;
    Ok(())
}

/// The name of the row at `y` (rows sit at whole numbers); empty between rows.
fn row_label(names: &[String], y: f64) -> String {
    let i = y.round();
    if (y - i).abs() < 0.01 && i >= 0.0 {
        names.get(i as usize).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

/// Horizontal bars: one per path, its value (e.g. connects/s) written beside it.
pub fn bars(
    file: &Path,
    title: &str,
    unit: &str,
    bars: &[(&str, f64)],
) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let max = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1.0) * 1.15;
    let height = 80 + 40 * bars.len() as u32;
    let root = SVGBackend::new(file, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let names: Vec<String> = bars.iter().map(|(n, _)| n.to_string()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(300)
        .build_cartesian_2d(0.0..max, -0.5f64..(bars.len() as f64 - 0.5))?;
    chart
        .configure_mesh()
        .x_desc(unit)
        .y_labels(bars.len())
        .y_label_formatter(&|y| row_label(&names, *y))
        .disable_y_mesh()
        .draw()?;
    for (i, (_, v)) in bars.iter().enumerate() {
        let y = i as f64;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, y - 0.35), (*v, y + 0.35)],
            BLUE.mix(0.6).filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{v:.0}"),
            (*v + max * 0.01, y + 0.1),
            ("sans-serif", 13),
        )))?;
    }
    root.present()?;
    Ok(())
}

/// One line of points, `(x, y)`, with a mark on each point.
pub fn line(
    file: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    points: &[(f64, f64)],
) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let x_max = points.iter().map(|p| p.0).fold(0.0, f64::max).max(1.0) * 1.05;
    let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.15;
    let root = SVGBackend::new(file, (700, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()?;
    chart.draw_series(LineSeries::new(
        points.iter().copied(),
        BLUE.stroke_width(2),
    ))?;
    chart.draw_series(
        points
            .iter()
            .map(|&(x, y)| Circle::new((x, y), 3, BLUE.filled())),
    )?;
    root.present()?;
    Ok(())
}
