//! The loss curve as a PNG: training loss per step and evaluation loss, with plotters.
//!
//! Text needs a TrueType font; plotters' `ab_glyph` backend takes one registered at run time,
//! which is looked up among the usual system font files (DejaVu / Liberation sans). Without one
//! the curve is drawn without labels and the caller is told.

use std::path::Path;

use medtune_qlora::train::TrainState;
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

/// Draws the loss curve of `state` to `path` (PNG). Returns whether it has labels.
pub fn loss_curve(state: &TrainState, path: &Path) -> Result<bool, String> {
    let labelled = register_font();
    let train: Vec<(f64, f64)> = state
        .steps
        .iter()
        .filter(|s| s.loss.is_finite())
        .map(|s| (s.step as f64, s.loss))
        .collect();
    let eval: Vec<(f64, f64)> = state
        .evals
        .iter()
        .filter(|e| e.loss.is_finite())
        .map(|e| (e.step as f64, e.loss))
        .collect();
    let max_step = state.steps.last().map_or(1.0, |s| s.step as f64).max(1.0);
    let max_loss = train
        .iter()
        .chain(&eval)
        .map(|p| p.1)
        .fold(0f64, f64::max)
        .max(1e-6)
        * 1.05;
    let (width, height) = (960u32, 540u32);
    let mut rgb = vec![255u8; (width * height * 3) as usize];
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let mut builder = ChartBuilder::on(&root);
        builder.margin(20);
        if labelled {
            builder
                .caption("medtune train: loss", ("sans-serif", 24))
                .x_label_area_size(40)
                .y_label_area_size(60);
        }
        let mut chart = builder
            .build_cartesian_2d(0f64..max_step, 0f64..max_loss)
            .map_err(|e| fail(&e))?;
        let mut mesh = chart.configure_mesh();
        if labelled {
            mesh.x_desc("optimiser step").y_desc("loss");
        } else {
            mesh.disable_x_mesh().disable_y_mesh();
        }
        mesh.draw().map_err(|e| fail(&e))?;
        chart
            .draw_series(LineSeries::new(train, BLUE.stroke_width(2)))
            .map_err(|e| fail(&e))?
            .label("training loss")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(LineSeries::new(eval.clone(), RED.stroke_width(2)))
            .map_err(|e| fail(&e))?
            .label("evaluation loss")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
        chart
            .draw_series(eval.into_iter().map(|p| Circle::new(p, 4, RED.filled())))
            .map_err(|e| fail(&e))?;
        if labelled {
            chart
                .configure_series_labels()
                .border_style(BLACK)
                .background_style(WHITE)
                .draw()
                .map_err(|e| fail(&e))?;
        }
        root.present().map_err(|e| fail(&e))?;
    }
    super::png::write_rgb(path, width, height, &rgb).map_err(|e| fail(&e))?;
    Ok(labelled)
}
