//! PNG charts with plotters: the training loss curve and grouped F1 bars.
//!
//! plotters draws into an RGB buffer that `png.rs` encodes. Text needs a TrueType font;
//! plotters' `ab_glyph` backend takes one registered at run time, looked up among the usual
//! system font files (DejaVu / Liberation sans). Without one a chart is drawn without labels
//! and its function says so (returns `false`).

mod png;

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

/// Font files tried, in order.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
];

/// Registers the first font found as plotters' `sans-serif`; false when there is none.
fn register_font() -> bool {
    for path in FONTS {
        if let Ok(bytes) = std::fs::read(path) {
            // plotters keeps the font for the process; leaking it once is what it asks for.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

/// (x, y) points of a curve.
pub type Points = Vec<(f64, f64)>;

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult = Result<(), Box<dyn std::error::Error + 'static>>;

/// Draws a 960 × 540 chart with `draw` (told whether text can be drawn) and writes it to
/// `path`. Returns whether it has labels.
fn render(path: &Path, draw: impl FnOnce(&Area<'_>, bool) -> DrawResult) -> Result<bool, String> {
    let labelled = register_font();
    let (width, height) = (960u32, 540u32);
    let mut rgb = vec![255u8; (width * height * 3) as usize];
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        draw(&root, labelled).map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))?;
    }
    png::write_rgb(path, width, height, &rgb).map_err(|e| fail(&e))?;
    Ok(labelled)
}

/// The loss curve: training loss per step (blue) and evaluation loss (red, dotted with
/// markers). Points are (step, loss); non-finite losses are left out.
pub fn loss_curve(train: &[(f64, f64)], eval: &[(f64, f64)], path: &Path) -> Result<bool, String> {
    let finite = |p: &&(f64, f64)| p.1.is_finite();
    let train: Vec<(f64, f64)> = train.iter().filter(finite).copied().collect();
    let eval: Vec<(f64, f64)> = eval.iter().filter(finite).copied().collect();
    let max_step = train.iter().chain(&eval).map(|p| p.0).fold(1f64, f64::max);
    let max_loss = train
        .iter()
        .chain(&eval)
        .map(|p| p.1)
        .fold(0f64, f64::max)
        .max(1e-6)
        * 1.05;
    render(path, |root, labelled| {
        let mut builder = ChartBuilder::on(root);
        builder.margin(20);
        if labelled {
            builder
                .caption("medtune train: loss", ("sans-serif", 24))
                .x_label_area_size(40)
                .y_label_area_size(60);
        }
        let mut chart = builder.build_cartesian_2d(0f64..max_step, 0f64..max_loss)?;
        let mut mesh = chart.configure_mesh();
        if labelled {
            mesh.x_desc("optimiser step").y_desc("loss");
        } else {
            mesh.disable_x_mesh().disable_y_mesh();
        }
        mesh.draw()?;
        chart
            .draw_series(LineSeries::new(train, BLUE.stroke_width(2)))?
            .label("training loss")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(LineSeries::new(eval.clone(), RED.stroke_width(2)))?
            .label("evaluation loss")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
        chart.draw_series(eval.into_iter().map(|p| Circle::new(p, 4, RED.filled())))?;
        if labelled {
            chart
                .configure_series_labels()
                .border_style(BLACK)
                .background_style(WHITE)
                .draw()?;
        }
        Ok(())
    })
}

/// Series colours of grouped bars, in series order.
const BAR_COLOURS: [RGBColor; 4] = [
    RGBColor(150, 150, 150),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
];

/// Grouped bars in [0, 1]: one group per category, one bar per series (`series[i].1[j]` is
/// series i's value for category j).
pub fn grouped_bars(
    title: &str,
    categories: &[String],
    series: &[(String, Vec<f64>)],
    path: &Path,
) -> Result<bool, String> {
    let groups = categories.len().max(1) as f64;
    let per_group = series.len().max(1) as f64;
    render(path, |root, labelled| {
        let mut builder = ChartBuilder::on(root);
        builder.margin(20);
        if labelled {
            builder
                .caption(title, ("sans-serif", 24))
                .x_label_area_size(40)
                .y_label_area_size(60);
        }
        let mut chart = builder.build_cartesian_2d(0f64..groups, 0f64..1.05f64)?;
        let mut mesh = chart.configure_mesh();
        mesh.disable_x_mesh().x_labels(0);
        if labelled {
            mesh.y_desc("F1");
        }
        mesh.draw()?;
        for (s, (name, values)) in series.iter().enumerate() {
            let colour = BAR_COLOURS[s % BAR_COLOURS.len()];
            let width = 0.8 / per_group;
            chart
                .draw_series(values.iter().enumerate().map(|(c, &v)| {
                    let left = c as f64 + 0.1 + s as f64 * width;
                    Rectangle::new([(left, 0.0), (left + width, v)], colour.filled())
                }))?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
                });
        }
        if labelled {
            // Category names above their groups, values above their bars.
            let style = ("sans-serif", 16).into_font().color(&BLACK);
            let width = 0.8 / per_group;
            chart.draw_series(
                categories.iter().enumerate().map(|(c, name)| {
                    Text::new(name.clone(), (c as f64 + 0.1, 1.04), style.clone())
                }),
            )?;
            let small = ("sans-serif", 12).into_font().color(&BLACK);
            for (s, (_, values)) in series.iter().enumerate() {
                chart.draw_series(values.iter().enumerate().map(|(c, &v)| {
                    let left = c as f64 + 0.1 + s as f64 * width;
                    Text::new(format!("{v:.3}"), (left, v + 0.03), small.clone())
                }))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .border_style(BLACK)
                .background_style(WHITE)
                .draw()?;
        }
        Ok(())
    })
}
