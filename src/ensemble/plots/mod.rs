//! PNG plots of an ensemble run (`runs/{exp}/ensemble/plots/*.png`): F2
//! against the threshold per group, per-class F2 against class frequency,
//! and labels per image, predicted against true. Rendered with `plotters`
//! and an embedded DejaVu Sans font (license beside it), so no system fonts
//! are needed. Returns PNG bytes; the caller stores them.

use crate::error::{Error, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;

const FONT: &[u8] = include_bytes!("DejaVuSans.ttf");
pub(crate) const FAMILY: &str = "imet-sans";
const SIZE: (u32, u32) = (900, 560);

fn err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Ensemble(format!("cannot draw plot `{what}`: {e}"))
}

/// Registers the embedded font under [`FAMILY`] (once per process).
pub(crate) fn register() -> Result<()> {
    static ONCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *ONCE.get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::Ensemble("the embedded plot font does not load".into()))
    }
}

/// Renders with `draw` into a PNG of [`SIZE`] and returns its bytes.
fn render(what: &str, draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<()>) -> Result<Vec<u8>> {
    register()?;
    let dir = tempfile::tempdir().map_err(|e| err(what, e))?;
    let path = dir.path().join("plot.png");
    {
        let root = BitMapBackend::new(&path, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(what, e))?;
        draw(&root)?;
        root.present().map_err(|e| err(what, e))?;
    }
    std::fs::read(&path).map_err(|source| Error::Io { path, source })
}

const COLORS: [RGBColor; 4] = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(148, 103, 189)];

/// F2 per image against the threshold, one curve per named series.
///
/// # Errors
/// [`Error::Ensemble`] when drawing fails.
pub fn f2_vs_threshold(series: &[(String, Vec<(f32, f64)>)]) -> Result<Vec<u8>> {
    const WHAT: &str = "f2_vs_threshold";
    render(WHAT, |root| {
        let ymax = series.iter().flat_map(|s| s.1.iter().map(|p| p.1)).fold(0.0f64, f64::max).max(0.05) * 1.05;
        let mut chart = ChartBuilder::on(root)
            .caption("OOF F2 against threshold (other group at its fitted threshold)", (FAMILY, 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0f32..1f32, 0f64..ymax)
            .map_err(|e| err(WHAT, e))?;
        chart
            .configure_mesh()
            .x_desc("threshold")
            .y_desc("F2 per image")
            .label_style((FAMILY, 14))
            .draw()
            .map_err(|e| err(WHAT, e))?;
        for (k, (name, pts)) in series.iter().enumerate() {
            let color = COLORS[k % COLORS.len()];
            chart
                .draw_series(LineSeries::new(pts.iter().map(|&(t, f)| (t, f)), color.stroke_width(2)))
                .map_err(|e| err(WHAT, e))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .label_font((FAMILY, 14))
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| err(WHAT, e))?;
        Ok(())
    })
}

/// Per-class F2 against the number of training images of the class
/// (log scale), coloured by group; `points` are (count, F2, is_culture).
///
/// # Errors
/// [`Error::Ensemble`] when drawing fails.
pub fn class_f2_vs_frequency(points: &[(u32, f64, bool)]) -> Result<Vec<u8>> {
    const WHAT: &str = "class_f2_vs_frequency";
    render(WHAT, |root| {
        let xmax = points.iter().map(|p| p.0).max().unwrap_or(1).max(2) as f64 * 1.5;
        let mut chart = ChartBuilder::on(root)
            .caption("Per-class OOF F2 against class frequency", (FAMILY, 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d((1f64..xmax).log_scale(), 0f64..1.02f64)
            .map_err(|e| err(WHAT, e))?;
        chart
            .configure_mesh()
            .x_desc("training images with the class")
            .y_desc("F2 of the class")
            .label_style((FAMILY, 14))
            .draw()
            .map_err(|e| err(WHAT, e))?;
        for (k, (name, culture)) in [("culture", true), ("tag", false)].into_iter().enumerate() {
            let color = COLORS[k];
            chart
                .draw_series(
                    points
                        .iter()
                        .filter(|p| p.2 == culture && p.0 > 0)
                        .map(|p| Circle::new((p.0 as f64, p.1), 3, color.mix(0.6).filled())),
                )
                .map_err(|e| err(WHAT, e))?
                .label(name)
                .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
        }
        chart
            .configure_series_labels()
            .label_font((FAMILY, 14))
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| err(WHAT, e))?;
        Ok(())
    })
}

/// Share of images with each label count, one line per named histogram
/// (index = labels per image).
///
/// # Errors
/// [`Error::Ensemble`] when drawing fails.
pub fn labels_per_image(histograms: &[(String, Vec<u64>)]) -> Result<Vec<u8>> {
    const WHAT: &str = "labels_per_image";
    render(WHAT, |root| {
        let xmax = histograms.iter().map(|h| h.1.len()).max().unwrap_or(1).max(2) as f64;
        let shares: Vec<(String, Vec<(f64, f64)>)> = histograms
            .iter()
            .map(|(n, h)| {
                let total = h.iter().sum::<u64>().max(1) as f64;
                (n.clone(), h.iter().enumerate().map(|(k, &v)| (k as f64, v as f64 / total)).collect())
            })
            .collect();
        let ymax = shares.iter().flat_map(|s| s.1.iter().map(|p| p.1)).fold(0.0f64, f64::max).max(0.05) * 1.1;
        let mut chart = ChartBuilder::on(root)
            .caption("Labels per image: predicted against true", (FAMILY, 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(|e| err(WHAT, e))?;
        chart
            .configure_mesh()
            .x_desc("labels per image")
            .y_desc("share of images")
            .label_style((FAMILY, 14))
            .draw()
            .map_err(|e| err(WHAT, e))?;
        for (k, (name, pts)) in shares.into_iter().enumerate() {
            let color = COLORS[k % COLORS.len()];
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| err(WHAT, e))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled()))).map_err(|e| err(WHAT, e))?;
        }
        chart
            .configure_series_labels()
            .label_font((FAMILY, 14))
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| err(WHAT, e))?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_png(b: &[u8]) -> bool {
        b.starts_with(&[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a])
    }

    #[test]
    fn every_plot_renders_a_png_with_text() {
        let curve: Vec<(f32, f64)> = (0..=100).map(|j| (j as f32 / 100.0, 0.6 - ((j as f64 - 20.0) / 100.0).powi(2))).collect();
        let a = f2_vs_threshold(&[("culture".into(), curve.clone()), ("tag".into(), curve)]).unwrap();
        let b = class_f2_vs_frequency(&[(1, 0.0, true), (100, 0.5, false), (20000, 0.8, false)]).unwrap();
        let c = labels_per_image(&[("true".into(), vec![0, 10, 30, 20, 5]), ("predicted".into(), vec![0, 2, 10, 30, 20, 3])]).unwrap();
        for png in [a, b, c] {
            assert!(is_png(&png) && png.len() > 5_000, "{} bytes", png.len());
        }
    }
}
