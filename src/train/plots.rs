//! PNG figures of a trained model, for the training stages' artifacts folder: the confusion
//! matrix, predicted against true values, permutation importance, and the learning curve.
//!
//! Each function returns the encoded PNG bytes (rendered into memory with plotters' bitmap
//! backend, encoded with the `image` crate), so the stage writes them with its other artifacts in
//! one atomic commit. Canvas sizes are fixed per figure (the constants below) and the content is
//! laid out inside them, so figures of different runs line up.
//!
//! Text is drawn with DejaVu Sans, shipped in `assets/fonts/` and compiled in: plotters' bitmap
//! text needs a font, and registering our own (with its `ab_glyph` rasterizer) avoids system font
//! libraries (fontconfig, freetype) on every machine that runs a pipeline.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, FontTransform, register_font};

/// DejaVu Sans 2.37 (Bitstream Vera license, `assets/fonts/LICENSE-DejaVu.txt`).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// Canvas sizes in pixels (width, height).
pub const CONFUSION_SIZE: (u32, u32) = (900, 800);
pub const PREDICTED_VS_TRUE_SIZE: (u32, u32) = (800, 800);
pub const IMPORTANCE_SIZE: (u32, u32) = (900, 700);
pub const LEARNING_CURVE_SIZE: (u32, u32) = (900, 600);

/// At most this many features are drawn in the importance chart (the largest; metrics.json has all).
pub const IMPORTANCE_MAX_BARS: usize = 25;
/// More `report_by` groups than this share one colour in the predicted-vs-true scatter.
pub const MAX_GROUP_COLOURS: usize = 10;

/// Tableau 10, a palette of distinguishable colours.
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

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("the bundled font DejaVuSans.ttf cannot be loaded")]
    Font,
    #[error("nothing to plot: {0}")]
    NoData(String),
    #[error("drawing: {0}")]
    Draw(String),
    #[error("PNG encoding: {0}")]
    Encode(String),
}

impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for PlotError {
    fn from(e: DrawingAreaErrorKind<E>) -> Self {
        PlotError::Draw(e.to_string())
    }
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn ensure_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    if *REGISTERED.get_or_init(|| register_font(FAMILY, FontStyle::Normal, FONT).is_ok()) { Ok(()) } else { Err(PlotError::Font) }
}

/// Renders `draw` on a white `size` canvas and encodes it as PNG. A panic inside plotters becomes
/// an error, so a figure can never take the stage (and its metrics) down with it.
fn render(size: (u32, u32), draw: impl FnOnce(&Area) -> Result<(), PlotError>) -> Result<Vec<u8>, PlotError> {
    ensure_font()?;
    let (w, h) = size;
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    let drawn = catch_unwind(AssertUnwindSafe(|| -> Result<(), PlotError> {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
        Ok(())
    }));
    match drawn {
        Ok(r) => r?,
        Err(p) => {
            let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
            return Err(PlotError::Draw(format!("the plotting library panicked: {msg}")));
        }
    }
    let mut png = Vec::new();
    use image::ImageEncoder;
    image::codecs::png::PngEncoder::new(&mut png).write_image(&buf, w, h, image::ColorType::Rgb8).map_err(|e| PlotError::Encode(e.to_string()))?;
    Ok(png)
}

fn font(size: f64) -> TextStyle<'static> {
    TextStyle::from((FAMILY, size).into_font()).color(&BLACK)
}

/// `text` cut to `max` characters (an ellipsis marks the cut), so one long name cannot push the
/// figure aside.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max { text.to_string() } else { format!("{}…", text.chars().take(max.saturating_sub(1)).collect::<String>()) }
}

fn text_width(area: &Area, text: &str, style: &TextStyle) -> i32 {
    area.estimate_text_size(text, style).map(|(w, _)| w as i32).unwrap_or(8 * text.len() as i32)
}

/// Linear blend from white (0) to a dark blue (1), the shading of the confusion matrix.
fn blues(f: f64) -> RGBColor {
    let f = f.clamp(0.0, 1.0);
    let mix = |hi: f64, lo: f64| (hi + (lo - hi) * f).round() as u8;
    RGBColor(mix(247.0, 8.0), mix(251.0, 48.0), mix(255.0, 107.0))
}

/// Confusion matrix `counts[true][predicted]`: every cell holds its count and its share of the
/// true class's rows, and is shaded by that share (row-normalized), so a rare class's errors are
/// as visible as a common one's. True classes run down the rows, predictions across the columns,
/// both in `classes` order; the diagonal is the correct predictions.
pub fn confusion_matrix(title: &str, classes: &[String], counts: &[Vec<u64>]) -> Result<Vec<u8>, PlotError> {
    let n = classes.len();
    if n == 0 || counts.len() != n || counts.iter().any(|r| r.len() != n) {
        return Err(PlotError::NoData(format!("a {}-row confusion matrix for {n} classes", counts.len())));
    }
    render(CONFUSION_SIZE, |root| {
        let (w, h) = (CONFUSION_SIZE.0 as i32, CONFUSION_SIZE.1 as i32);
        let label_size = if n > 15 { 11.0 } else { 14.0 };
        let label = font(label_size);
        let names: Vec<String> = classes.iter().map(|c| shorten(c, 28)).collect();
        let widest = names.iter().map(|s| text_width(root, s, &label)).max().unwrap_or(0);
        root.draw(&Text::new(shorten(title, 90), (w / 2, 22), font(20.0).pos(Pos::new(HPos::Center, VPos::Center))))?;
        let (top, right) = (56, 120);
        let left = widest + 56;
        // Column names are written across when they fit in a cell, rotated otherwise.
        let across_cell = (w - left - right) / n as i32;
        let rotate = widest + 6 > across_cell.min((h - top - 70) / n as i32);
        let bottom = if rotate { widest.min(200) + 50 } else { 64 };
        let cell = ((w - left - right) / n as i32).min((h - top - bottom) / n as i32).max(4);
        let (x0, y0) = (left, top);
        let side = cell * n as i32;
        for (t, row) in counts.iter().enumerate() {
            let total: u64 = row.iter().sum();
            for (p, &c) in row.iter().enumerate() {
                let share = if total == 0 { 0.0 } else { c as f64 / total as f64 };
                let (cx, cy) = (x0 + p as i32 * cell, y0 + t as i32 * cell);
                root.draw(&Rectangle::new([(cx, cy), (cx + cell, cy + cell)], blues(share).filled()))?;
                root.draw(&Rectangle::new([(cx, cy), (cx + cell, cy + cell)], RGBColor(200, 200, 200).stroke_width(1)))?;
                if cell >= 26 {
                    let ink = if share > 0.5 { WHITE } else { BLACK };
                    let size = (cell as f64 / 3.2).min(18.0);
                    let centre = (cx + cell / 2, cy + cell / 2);
                    if cell >= 52 {
                        let style = font(size).color(&ink).pos(Pos::new(HPos::Center, VPos::Center));
                        root.draw(&Text::new(c.to_string(), (centre.0, centre.1 - (size * 0.6) as i32), style.clone()))?;
                        let pct = font(size * 0.75).color(&ink).pos(Pos::new(HPos::Center, VPos::Center));
                        root.draw(&Text::new(format!("{:.0}%", 100.0 * share), (centre.0, centre.1 + (size * 0.7) as i32), pct))?;
                    } else {
                        root.draw(&Text::new(c.to_string(), centre, font(size).color(&ink).pos(Pos::new(HPos::Center, VPos::Center))))?;
                    }
                }
            }
        }
        root.draw(&Rectangle::new([(x0, y0), (x0 + side, y0 + side)], BLACK.stroke_width(1)))?;
        for (i, name) in names.iter().enumerate() {
            let mid = i as i32 * cell + cell / 2;
            root.draw(&Text::new(name.clone(), (x0 - 8, y0 + mid), label.clone().pos(Pos::new(HPos::Right, VPos::Center))))?;
            if rotate {
                let style = label.clone().transform(FontTransform::Rotate270).pos(Pos::new(HPos::Right, VPos::Center));
                root.draw(&Text::new(name.clone(), (x0 + mid, y0 + side + 8), style))?;
            } else {
                root.draw(&Text::new(name.clone(), (x0 + mid, y0 + side + 8), label.clone().pos(Pos::new(HPos::Center, VPos::Top))))?;
            }
        }
        let axis = font(16.0);
        let x_title_y = if rotate { y0 + side + 14 + widest.min(200) + 14 } else { y0 + side + 38 };
        root.draw(&Text::new("predicted class", (x0 + side / 2, x_title_y), axis.clone().pos(Pos::new(HPos::Center, VPos::Top))))?;
        let y_title = axis.transform(FontTransform::Rotate270).pos(Pos::new(HPos::Center, VPos::Top));
        root.draw(&Text::new("true class", (left - widest - 46, y0 + side / 2), y_title))?;
        // Colour bar: the share of the true class's rows.
        let (bx, bw, bh) = (x0 + side + 30, 18, side.min(300));
        for k in 0..bh {
            let f = 1.0 - k as f64 / (bh - 1).max(1) as f64;
            root.draw(&Rectangle::new([(bx, y0 + k), (bx + bw, y0 + k + 1)], blues(f).filled()))?;
        }
        root.draw(&Rectangle::new([(bx, y0), (bx + bw, y0 + bh)], BLACK.stroke_width(1)))?;
        let small = font(12.0).pos(Pos::new(HPos::Left, VPos::Center));
        root.draw(&Text::new("100%", (bx + bw + 5, y0), small.clone()))?;
        root.draw(&Text::new("0%", (bx + bw + 5, y0 + bh), small.clone()))?;
        root.draw(&Text::new("of the", (bx - 4, y0 + bh + 18), small.clone()))?;
        root.draw(&Text::new("true class", (bx - 4, y0 + bh + 34), small))?;
        Ok(())
    })
}

fn padded_range(lo: f64, hi: f64) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span <= 0.0 {
        let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return (lo - d, hi + d);
    }
    (lo - 0.05 * span, hi + 0.05 * span)
}

/// Predicted against true values with the identity line (a perfect model puts every point on it).
/// Both axes share one range so distance from the line reads the same everywhere. `groups` (a
/// column name and one value per point, e.g. the `report_by` column) colours the points with a
/// legend, when there are at most [`MAX_GROUP_COLOURS`] values.
pub fn predicted_vs_true(title: &str, axis_label: &str, truth: &[f64], predicted: &[f64], groups: Option<(&str, &[String])>) -> Result<Vec<u8>, PlotError> {
    let pts: Vec<(usize, (f64, f64))> =
        truth.iter().zip(predicted).map(|(&t, &p)| (t, p)).enumerate().filter(|(_, (t, p))| t.is_finite() && p.is_finite()).collect();
    if pts.is_empty() || truth.len() != predicted.len() {
        return Err(PlotError::NoData(format!("{} true and {} predicted values, none finite in pairs", truth.len(), predicted.len())));
    }
    let lo = pts.iter().map(|(_, (t, p))| t.min(*p)).fold(f64::INFINITY, f64::min);
    let hi = pts.iter().map(|(_, (t, p))| t.max(*p)).fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = padded_range(lo, hi);
    // Group -> colour (sorted group names, so colours are stable between runs).
    let column = groups.map_or("", |(c, _)| c);
    let by_group: Option<BTreeMap<&str, Vec<(f64, f64)>>> = groups.map(|(_, g)| g).filter(|g| g.len() == truth.len()).and_then(|g| {
        let mut m: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
        for (i, xy) in &pts {
            m.entry(g[*i].as_str()).or_default().push(*xy);
        }
        (m.len() <= MAX_GROUP_COLOURS).then_some(m)
    });
    let radius = if pts.len() > 2000 { 2 } else { 3 };
    let opacity = if pts.len() > 2000 { 0.35 } else { 0.7 };
    render(PREDICTED_VS_TRUE_SIZE, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(shorten(title, 70), font(20.0))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(lo..hi, lo..hi)?;
        chart
            .configure_mesh()
            .max_light_lines(1)
            .light_line_style(RGBColor(240, 240, 240))
            .x_desc(format!("true {}", shorten(axis_label, 40)))
            .y_desc(format!("predicted {}", shorten(axis_label, 40)))
            .axis_desc_style(font(16.0))
            .label_style(font(13.0))
            .draw()?;
        chart.draw_series(LineSeries::new([(lo, lo), (hi, hi)], BLACK.stroke_width(1)))?.label("identity (y = x)").legend(|(x, y)| {
            PathElement::new([(x, y), (x + 18, y)], BLACK.stroke_width(1))
        });
        match &by_group {
            Some(groups) => {
                for (k, (name, xy)) in groups.iter().enumerate() {
                    let c = PALETTE[k % PALETTE.len()];
                    chart
                        .draw_series(xy.iter().map(|&p| Circle::new(p, radius, c.mix(opacity).filled())))?
                        .label(format!("{} = {}", shorten(column, 20), shorten(name, 24)))
                        .legend(move |(x, y)| Circle::new((x + 9, y), 4, c.filled()));
                }
            }
            None => {
                let c = PALETTE[0];
                chart
                    .draw_series(pts.iter().map(|(_, p)| Circle::new(*p, radius, c.mix(opacity).filled())))?
                    .label(format!("{} rows", pts.len()))
                    .legend(move |(x, y)| Circle::new((x + 9, y), 4, c.filled()));
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font(font(13.0))
            .draw()?;
        Ok(())
    })
}

/// Horizontal bars of permutation importance (`mean` drop in score, whiskers ± `std`), largest at
/// the top; at most [`IMPORTANCE_MAX_BARS`] features, the rest noted in the axis label.
pub fn importance(title: &str, score_label: &str, names: &[String], mean: &[f64], std: &[f64]) -> Result<Vec<u8>, PlotError> {
    if names.is_empty() || names.len() != mean.len() || names.len() != std.len() {
        return Err(PlotError::NoData(format!("{} names, {} means, {} deviations", names.len(), mean.len(), std.len())));
    }
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|&a, &b| mean[b].total_cmp(&mean[a]).then(a.cmp(&b)));
    let shown: Vec<usize> = order.into_iter().take(IMPORTANCE_MAX_BARS).collect();
    let k = shown.len();
    let lo = shown.iter().map(|&i| (mean[i] - std[i]).min(0.0)).fold(0.0, f64::min);
    let hi = shown.iter().map(|&i| (mean[i] + std[i]).max(0.0)).fold(0.0, f64::max);
    // Room on the right for the value labels.
    let (lo, hi) = if hi - lo <= 0.0 { (-0.01, 0.01) } else { (lo - 0.04 * (hi - lo), hi + 0.22 * (hi - lo)) };
    let hidden = names.len() - k;
    // At least 8 slots, so two features do not become two slabs; bars fill from the top.
    let slots = k.max(8);
    render(IMPORTANCE_SIZE, |root| {
        let label = font(if k > 18 { 11.0 } else { 13.0 });
        let labels: Vec<String> = shown.iter().map(|&i| shorten(&names[i], 32)).collect();
        let widest = labels.iter().map(|s| text_width(root, s, &label)).max().unwrap_or(0);
        let mut chart = ChartBuilder::on(root)
            .caption(shorten(title, 80), font(20.0))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(widest + 14)
            .build_cartesian_2d(lo..hi, -0.5..(slots as f64 - 0.5))?;
        let x_desc = if hidden > 0 { format!("{score_label} ({hidden} smaller not shown)") } else { score_label.to_string() };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .max_light_lines(1)
            .light_line_style(RGBColor(240, 240, 240))
            .x_desc(x_desc)
            .axis_desc_style(font(15.0))
            .label_style(font(13.0))
            .draw()?;
        // Row r (0 = top) sits at y = slots - 1 - r.
        let y_of = |r: usize| (slots - 1 - r) as f64;
        let half = 0.35;
        chart.draw_series(shown.iter().enumerate().map(|(r, &i)| {
            let c = if mean[i] >= 0.0 { PALETTE[0] } else { PALETTE[7] };
            Rectangle::new([(0.0, y_of(r) - half), (mean[i], y_of(r) + half)], c.filled())
        }))?;
        chart.draw_series(shown.iter().enumerate().filter(|(_, i)| std[**i] > 0.0).map(|(r, &i)| {
            PathElement::new([(mean[i] - std[i], y_of(r)), (mean[i] + std[i], y_of(r))], BLACK.stroke_width(1))
        }))?;
        chart.draw_series(std::iter::once(PathElement::new([(0.0, -0.5), (0.0, slots as f64 - 0.5)], BLACK.stroke_width(1))))?;
        let value = font(if k > 18 { 10.0 } else { 12.0 }).pos(Pos::new(HPos::Left, VPos::Center));
        for (r, text) in labels.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(lo, y_of(r)));
            root.draw(&Text::new(text.clone(), (px - 8, py), label.clone().pos(Pos::new(HPos::Right, VPos::Center))))?;
            let i = shown[r];
            let (vx, vy) = chart.backend_coord(&((mean[i] + std[i]).max(0.0), y_of(r)));
            root.draw(&Text::new(format!("{:.3} ± {:.3}", mean[i], std[i]), (vx + 6, vy), value.clone()))?;
        }
        Ok(())
    })
}

/// Score against training-set size: the score on the rows each model was fitted on, and the
/// out-of-fold score, one point per training fraction. A gap that closes as rows are added says
/// more data helps; two flat, close curves say the model is limited by its form or features.
pub fn learning_curve(title: &str, score_label: &str, train_rows: &[f64], train_score: &[f64], validation_score: &[f64]) -> Result<Vec<u8>, PlotError> {
    let n = train_rows.len();
    if n == 0 || train_score.len() != n || validation_score.len() != n {
        return Err(PlotError::NoData(format!("{n} sizes, {} training and {} validation scores", train_score.len(), validation_score.len())));
    }
    let finite = |v: &[f64]| v.iter().copied().filter(|x| x.is_finite()).collect::<Vec<_>>();
    let scores: Vec<f64> = finite(train_score).into_iter().chain(finite(validation_score)).collect();
    let (ylo, yhi) = padded_range(scores.iter().copied().fold(f64::INFINITY, f64::min), scores.iter().copied().fold(f64::NEG_INFINITY, f64::max));
    let (xlo, xhi) = padded_range(0.0, train_rows.iter().copied().fold(0.0, f64::max));
    render(LEARNING_CURVE_SIZE, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(shorten(title, 80), font(20.0))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(xlo.max(0.0)..xhi, ylo..yhi)?;
        chart
            .configure_mesh()
            .max_light_lines(1)
            .light_line_style(RGBColor(240, 240, 240))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .x_desc("training rows per fold")
            .y_desc(score_label)
            .axis_desc_style(font(16.0))
            .label_style(font(13.0))
            .draw()?;
        for (name, ys, c) in [("on the training rows", train_score, PALETTE[1]), ("out of fold (held out)", validation_score, PALETTE[0])] {
            let xy: Vec<(f64, f64)> = train_rows.iter().copied().zip(ys.iter().copied()).filter(|(_, y)| y.is_finite()).collect();
            chart.draw_series(LineSeries::new(xy.clone(), c.stroke_width(2)))?.label(name).legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
            chart.draw_series(xy.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font(font(13.0))
            .draw()?;
        Ok(())
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Decodes a PNG and returns (width, height, RGB pixels); panics with `what` when it is not one.
    pub(crate) fn decode(png: &[u8], what: &str) -> (u32, u32, Vec<[u8; 3]>) {
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{what}: PNG signature");
        let img = image::load_from_memory_with_format(png, image::ImageFormat::Png).unwrap_or_else(|e| panic!("{what}: {e}")).to_rgb8();
        let (w, h) = img.dimensions();
        (w, h, img.pixels().map(|p| p.0).collect())
    }

    #[test]
    fn every_figure_renders_at_its_size_with_ink() {
        let classes: Vec<String> = ["burst", "tonic", "a very long class name indeed"].map(String::from).to_vec();
        let figures = [
            ("confusion", confusion_matrix("cm", &classes, &[vec![5, 1, 0], vec![2, 7, 1], vec![0, 0, 9]]).unwrap(), CONFUSION_SIZE),
            ("scatter", predicted_vs_true("pvt", "g (nS)", &[1.0, 2.0, 3.0], &[1.1, 1.9, 3.3], None).unwrap(), PREDICTED_VS_TRUE_SIZE),
            ("importance", importance("imp", "drop in R²", &classes, &[0.5, -0.01, 0.1], &[0.05, 0.01, 0.0]).unwrap(), IMPORTANCE_SIZE),
            ("curve", learning_curve("lc", "R²", &[10.0, 20.0], &[0.9, 0.8], &[0.5, 0.7]).unwrap(), LEARNING_CURVE_SIZE),
        ];
        for (what, png, size) in figures {
            let (w, h, px) = decode(&png, what);
            assert_eq!((w, h), size, "{what}");
            let colours: std::collections::BTreeSet<[u8; 3]> = px.iter().copied().collect();
            assert!(colours.len() > 20, "{what}: {} colours", colours.len());
            let dark = px.iter().filter(|p| p.iter().all(|&c| c < 100)).count();
            assert!(dark > 500, "{what}: {dark} dark (text, axes) pixels");
        }
    }

    /// Many classes with long names: the column names are rotated and the cells lose their text
    /// before it would overflow them.
    #[test]
    fn a_large_confusion_matrix_still_renders() {
        let classes: Vec<String> = (0..14).map(|k| format!("stimulus category number {k}")).collect();
        let counts: Vec<Vec<u64>> = (0..14).map(|t| (0..14).map(|p| if t == p { 40 } else { (t + p) as u64 % 3 }).collect()).collect();
        let png = confusion_matrix("fourteen classes", &classes, &counts).unwrap();
        let (w, h, px) = decode(&png, "14 classes");
        assert_eq!((w, h), CONFUSION_SIZE);
        assert!(px.iter().filter(|p| p.iter().all(|&c| c < 80)).count() > 2000);
        if let Ok(dir) = std::env::var("NEUROSTREAM_PLOT_DUMP") {
            std::fs::write(std::path::Path::new(&dir).join("confusion14.png"), &png).unwrap();
        }
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(confusion_matrix("t", &["a".into()], &[vec![1, 2]]), Err(PlotError::NoData(_))));
        assert!(matches!(predicted_vs_true("t", "y", &[f64::NAN], &[1.0], None), Err(PlotError::NoData(_))));
        assert!(matches!(importance("t", "s", &[], &[], &[]), Err(PlotError::NoData(_))));
        assert!(matches!(learning_curve("t", "s", &[1.0], &[], &[]), Err(PlotError::NoData(_))));
        // Degenerate but valid: one value everywhere still draws.
        assert!(predicted_vs_true("t", "y", &[2.0, 2.0], &[2.0, 2.0], None).is_ok());
        assert!(importance("t", "s", &["x".into()], &[0.0], &[0.0]).is_ok());
    }
}
