//! The learning-curve PNG of one model: a title with the model and its
//! mean best F2, a losses panel (training loss solid, validation loss
//! dashed) and a validation-F2 panel (best epoch ringed), one colour per
//! fold, phase changes marked. Drawn with `plotters` into memory with the
//! ensemble plots' embedded font, encoded as PNG; same curves, same bytes.

use super::curves::ModelCurves;
use crate::ensemble::plots::{register, FAMILY};
use crate::error::{Error, Result};
use crate::storage::parquet::EpochRecord;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

/// Width and height of a curves PNG, pixels.
pub const SIZE: (u32, u32) = (1000, 900);

/// One colour per fold (the "tab10" palette), repeating after ten.
const COLORS: [RGBColor; 10] = [
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

fn err(model: &str, e: impl std::fmt::Display) -> Error {
    Error::Report(format!("cannot draw the learning curves of model `{model}`: {e}"))
}

/// A padded value range around the finite `values` (`fallback` when none).
fn padded(values: impl Iterator<Item = f64>, floor: Option<f64>, fallback: (f64, f64)) -> (f64, f64) {
    let (lo, hi) = values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return fallback;
    }
    let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.02).max(1e-4);
    let lo = floor.map_or(lo - pad, |f| (lo - pad).max(f));
    (lo, hi + pad)
}

/// Decimals that tell apart the ticks of a span.
fn decimals(span: f64) -> usize {
    if span <= 0.0 || !span.is_finite() {
        return 2;
    }
    (1.0 - span.log10().floor()).clamp(1.0, 5.0) as usize
}

/// The epoch axis: a continuous range (phase boundaries sit between
/// epochs) whose ticks are whole epochs only.
struct EpochAxis {
    range: RangedCoordf64,
    ticks: Vec<f64>,
}

impl EpochAxis {
    fn new(last: u32) -> EpochAxis {
        EpochAxis { range: (0.6..f64::from(last) + 0.4).into(), ticks: epoch_ticks(last) }
    }
}

impl Ranged for EpochAxis {
    type ValueType = f64;
    type FormatOption = DefaultFormatting;

    fn range(&self) -> std::ops::Range<f64> {
        self.range.range()
    }

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.range.map(value, limit)
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }
}

/// Epoch ticks: every epoch up to 12, then a round step.
fn epoch_ticks(last: u32) -> Vec<f64> {
    let step = match last {
        0..=12 => 1,
        13..=30 => 2,
        31..=60 => 5,
        61..=150 => 10,
        _ => last.div_ceil(12),
    };
    (1..=last).filter(|e| *e == 1 || e % step == 0).map(f64::from).collect()
}

/// Epochs (1-based) where a new phase starts, with its name, from the first fold with history.
fn phase_starts(curves: &ModelCurves) -> Vec<(u32, String)> {
    let Some(h) = curves.folds.iter().find(|f| !f.history.is_empty()).map(|f| &f.history) else { return Vec::new() };
    let multi = h.windows(2).any(|w| w[0].phase != w[1].phase);
    if !multi {
        return Vec::new();
    }
    h.iter().enumerate().filter(|(i, r)| *i == 0 || h[i - 1].phase != r.phase).map(|(_, r)| (r.epoch, r.phase.clone())).collect()
}

fn points(h: &[EpochRecord], value: fn(&EpochRecord) -> f64) -> Vec<(f64, f64)> {
    h.iter().map(|r| (f64::from(r.epoch), value(r))).filter(|p| p.1.is_finite()).collect()
}

/// Draws the learning curves of `curves` (every fold with history) as a PNG.
///
/// # Errors
/// [`Error::Report`] when drawing or encoding fails; the font error of
/// the ensemble plots when the embedded font does not load.
pub fn curves_png(curves: &ModelCurves) -> Result<Vec<u8>> {
    register()?;
    let model = curves.model.as_str();
    let (w, h) = SIZE;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(model, e))?;
        draw(&root, curves).map_err(|e| err(model, e))?;
        root.present().map_err(|e| err(model, e))?;
    }
    let image = image::RgbImage::from_raw(w, h, buf).expect("the buffer holds w * h RGB pixels");
    let mut png = std::io::Cursor::new(Vec::new());
    image.write_to(&mut png, image::ImageFormat::Png).map_err(|e| err(model, e))?;
    Ok(png.into_inner())
}

type DrawResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn draw(root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>, c: &ModelCurves) -> DrawResult<()> {
    let with_history: Vec<_> = c.folds.iter().filter(|f| !f.history.is_empty()).collect();
    let missing: Vec<String> = c.folds.iter().filter(|f| f.history.is_empty()).map(|f| f.fold.to_string()).collect();
    let mean = c.mean_best_f2.map_or("-".to_string(), |v| format!("{v:.4}"));
    let title = format!("{}: mean best validation F2 {mean} over {}/{} folds", c.model, with_history.len(), c.folds.len());
    let root = root.titled(&title, (FAMILY, 24))?;
    let root = if missing.is_empty() {
        root
    } else {
        let note = format!("no history yet for fold(s) {}", missing.join(", "));
        root.draw(&Text::new(note, (20, 2), (FAMILY, 15).into_font().color(&RGBColor(160, 0, 0))))?;
        root.margin(20, 0, 0, 0)
    };
    let last = with_history.iter().flat_map(|f| f.history.iter().map(|r| r.epoch)).max().unwrap_or(1).max(1);
    let phases = phase_starts(c);
    let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 / 2);

    // Losses.
    let losses = with_history.iter().flat_map(|f| f.history.iter().flat_map(|r| [r.train_loss, r.valid_loss]));
    let (lo, hi) = padded(losses, Some(0.0), (0.0, 1.0));
    let mut chart = ChartBuilder::on(&top)
        .margin(12)
        .margin_right(24)
        .x_label_area_size(48)
        .y_label_area_size(78)
        .build_cartesian_2d(EpochAxis::new(last), lo..hi)?;
    let digits = decimals(hi - lo);
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("loss")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.digits$}"))
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 17))
        .draw()?;
    draw_phases(&mut chart, &phases, (lo, hi))?;
    for f in &with_history {
        let color = COLORS[f.fold as usize % COLORS.len()];
        let train = points(&f.history, |r| r.train_loss);
        let valid = points(&f.history, |r| r.valid_loss);
        chart.draw_series(LineSeries::new(train.clone(), color.stroke_width(2)))?;
        chart.draw_series(train.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
        chart.draw_series(DashedLineSeries::new(valid.clone(), 8, 5, color.stroke_width(2)))?;
        chart.draw_series(valid.iter().map(|p| Circle::new(*p, 4, color.stroke_width(2))))?;
    }
    // Style legend, in black: solid is training, dashed is validation.
    chart
        .draw_series(std::iter::once(PathElement::new(Vec::<(f64, f64)>::new(), BLACK.stroke_width(2))))?
        .label("training loss (solid, dots)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], BLACK.stroke_width(2)));
    chart
        .draw_series(std::iter::once(PathElement::new(Vec::<(f64, f64)>::new(), BLACK.stroke_width(2))))?
        .label("validation loss (dashed, rings)")
        .legend(|(x, y)| DashedPathElement::new(vec![(x, y), (x + 22, y)], 5, 3, BLACK.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FAMILY, 15))
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()?;

    // Validation F2.
    let f2s = with_history.iter().flat_map(|f| f.history.iter().map(|r| r.valid_f2));
    let (_, f2_hi) = padded(f2s, Some(0.0), (0.0, 1.0));
    let f2_hi = f2_hi.clamp(0.05, 1.0);
    let mut chart = ChartBuilder::on(&bottom)
        .margin(12)
        .margin_right(24)
        .x_label_area_size(48)
        .y_label_area_size(78)
        .build_cartesian_2d(EpochAxis::new(last), 0f64..f2_hi)?;
    let digits = decimals(f2_hi);
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("validation F2 (best threshold)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.digits$}"))
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 17))
        .draw()?;
    draw_phases(&mut chart, &phases, (0.0, f2_hi))?;
    for f in &with_history {
        let color = COLORS[f.fold as usize % COLORS.len()];
        let pts = points(&f.history, |r| r.valid_f2);
        let label = match (f.best_f2, f.best_epoch) {
            (Some(b), Some(e)) => format!("fold {}: best {b:.4} at epoch {e}", f.fold),
            _ => format!("fold {}", f.fold),
        };
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(3)));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
        if let (Some(b), Some(e)) = (f.best_f2, f.best_epoch) {
            chart.draw_series(std::iter::once(Circle::new((f64::from(e), b), 8, color.stroke_width(2))))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FAMILY, 15))
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()?;
    Ok(())
}

/// Grey vertical lines where phases start (after the first), named at the top.
fn draw_phases<X, DB>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<X, plotters::coord::types::RangedCoordf64>>,
    phases: &[(u32, String)],
    (lo, hi): (f64, f64),
) -> DrawResult<()>
where
    X: Ranged<ValueType = f64>,
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    let grey = RGBColor(150, 150, 150);
    for (epoch, name) in phases {
        let x = f64::from(*epoch) - 0.5;
        if *epoch > 1 {
            chart.draw_series(DashedLineSeries::new(vec![(x, lo), (x, hi)], 4, 4, grey.stroke_width(1)))?;
        }
        let y = hi - (hi - lo) * 0.04;
        chart.draw_series(std::iter::once(Text::new(format!("phase {name}"), (x.max(0.62) + 0.03, y), (FAMILY, 13).into_font().color(&grey))))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_ticks_are_whole_epochs_and_thin_out_for_long_runs() {
        assert_eq!(epoch_ticks(3), vec![1.0, 2.0, 3.0]);
        assert_eq!(epoch_ticks(40), vec![1.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0]);
    }

    #[test]
    fn ranges_ignore_non_finite_values_and_keep_a_floor() {
        let (lo, hi) = padded([0.2, f64::NAN, 0.3, f64::INFINITY].into_iter(), Some(0.0), (0.0, 1.0));
        assert!(lo < 0.2 && lo >= 0.0 && hi > 0.3 && hi < 0.4, "{lo} {hi}");
        assert_eq!(padded(std::iter::empty(), None, (0.0, 1.0)), (0.0, 1.0));
        assert_eq!(decimals(0.05), 3);
    }
}
