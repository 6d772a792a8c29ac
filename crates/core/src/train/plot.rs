//! Pictures of runs and evaluations, drawn with `plotters` into PNG files: training curves
//! (`curves.png` of every run, the tools' `plot` commands), confusion matrices and reliability
//! diagrams (moola's `evaluate` and `oof`), and CMC curves (reid's `test`).
//!
//! Text uses the font bundled in kiln (Roboto Regular, Apache-2.0, `assets/fonts/` of this crate
//! with its licence), registered with plotters' `ab_glyph` renderer, so that drawing needs no
//! system fonts.

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{Context, Result, bail};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::train::callbacks::Mode;
use crate::train::metric_log::{Row, read_csv};

/// The bundled font.
static FONT: &[u8] = include_bytes!("../../assets/fonts/Roboto-Regular.ttf");
const FAMILY: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_err() {
            tracing::warn!("the bundled font could not be loaded: pictures will have no text");
        }
    });
}

fn font(size: u32) -> TextStyle<'static> {
    (FAMILY, size).into_font().into()
}

/// Colours of successive series.
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing failed: {e}")
}

/// Draws a `width` × `height` picture with `draw` and writes it to `path` as a PNG.
fn render(
    path: &Path,
    width: u32,
    height: u32,
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>,
) -> Result<()> {
    register_font();
    let mut buf = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw(&root)?;
        root.present().map_err(err)?;
    }
    let img = image::RgbImage::from_raw(width, height, buf).context("picture buffer size")?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create directory {}", parent.display()))?;
    }
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png)
        .context("cannot encode PNG")?;
    crate::files::io::write_atomic(path, bytes.get_ref())
        .with_context(|| format!("cannot write picture {}", path.display()))
}

/// A run's metrics for its training-curve panels.
#[derive(Debug, Clone)]
pub struct RunCurves {
    /// Title of the run's column (its directory name).
    pub name: String,
    /// metrics.csv rows.
    pub rows: Vec<(usize, Row)>,
    /// The monitored metric (best epoch = its best value).
    pub monitor: String,
    /// Its direction.
    pub mode: Mode,
}

/// File name of a run's metrics log.
pub const METRICS_FILE: &str = "metrics.csv";
/// File name of the training-curve picture written into every run directory.
pub const CURVES_FILE: &str = "curves.png";

impl RunCurves {
    /// Reads `<dir>/metrics.csv`; errors name the file when it is missing, unreadable, empty or
    /// lacks the `monitor` column.
    pub fn load(dir: &Path, monitor: &str, mode: Mode) -> Result<Self> {
        let (name, rows) = Self::read(dir)?;
        Self::from_rows(name, rows, monitor, mode)
            .with_context(|| dir.join(METRICS_FILE).display().to_string())
    }

    /// A run's name and metrics.csv rows, with errors naming the directory or file.
    fn read(dir: &Path) -> Result<(String, Vec<(usize, Row)>)> {
        if !dir.is_dir() {
            bail!("run directory {} does not exist", dir.display());
        }
        let path = dir.join(METRICS_FILE);
        if !path.is_file() {
            bail!(
                "{} does not exist: {} is not a training run directory",
                path.display(),
                dir.display()
            );
        }
        let rows = read_csv(&path)?;
        let name = dir
            .canonicalize()
            .unwrap_or_else(|_| dir.to_path_buf())
            .file_name()
            .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into());
        Ok((name, rows))
    }

    /// Curves of rows already in memory (e.g. [`FitOutcome::history`]).
    ///
    /// [`FitOutcome::history`]: crate::train::trainer::FitOutcome::history
    pub fn from_rows(
        name: impl Into<String>,
        rows: Vec<(usize, Row)>,
        monitor: &str,
        mode: Mode,
    ) -> Result<Self> {
        if rows.is_empty() {
            bail!("no epochs logged");
        }
        if !rows.iter().any(|(_, r)| r.contains_key(monitor)) {
            let mut columns: Vec<&String> = rows.iter().flat_map(|(_, r)| r.keys()).collect();
            columns.sort();
            columns.dedup();
            bail!(
                "no `{monitor}` column (the monitored metric); columns: {}",
                columns
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(Self {
            name: name.into(),
            rows,
            monitor: monitor.to_string(),
            mode,
        })
    }

    /// (epoch, value) of a column, where logged and finite.
    pub fn series(&self, column: &str) -> Vec<(f64, f64)> {
        self.rows
            .iter()
            .filter_map(|(e, r)| r.get(column).map(|v| (*e as f64, *v)))
            .filter(|(_, v)| v.is_finite())
            .collect()
    }

    /// The epoch with the best monitored value, and that value.
    pub fn best(&self) -> Option<(usize, f64)> {
        let mut best: Option<(usize, f64)> = None;
        for (e, r) in &self.rows {
            if let Some(&v) = r.get(&self.monitor)
                && v.is_finite()
                && best.is_none_or(|(_, b)| self.mode.better(v, b, 0.0))
            {
                best = Some((*e, v));
            }
        }
        best
    }

    /// The panels of this run: the losses, then the monitored metric (or, when the monitor is a
    /// loss, the accuracy where logged). Each panel is (title, columns).
    fn panels(&self) -> Vec<(String, Vec<String>)> {
        let has = |c: &str| self.rows.iter().any(|(_, r)| r.contains_key(c));
        let mut panels = vec![(
            "loss".to_string(),
            ["train_loss", "val_loss"]
                .into_iter()
                .filter(|c| has(c))
                .map(String::from)
                .collect::<Vec<_>>(),
        )];
        let metric = if self.monitor.contains("loss") {
            ["val_acc", "val_accuracy", "train_acc", "train_accuracy"]
                .into_iter()
                .find(|c| has(c))
                .map(String::from)
        } else {
            Some(self.monitor.clone())
        };
        if let Some(metric) = metric {
            let base = metric
                .strip_prefix("val_")
                .or_else(|| metric.strip_prefix("train_"))
                .unwrap_or(&metric);
            let mut columns = Vec::new();
            for c in [
                format!("train_{base}"),
                metric.clone(),
                format!("val_{base}"),
            ] {
                if has(&c) && !columns.contains(&c) {
                    columns.push(c);
                }
            }
            panels.push((base.to_string(), columns));
        }
        panels.retain(|(_, c)| !c.is_empty());
        panels
    }
}

/// Draws training curves of one or more runs, side by side (one column per run, the loss panel
/// above the metric panel), with the best epoch of the monitored metric marked.
pub fn training_curves(runs: &[RunCurves], path: &Path) -> Result<()> {
    if runs.is_empty() {
        bail!("no runs to plot");
    }
    let panel_w = 560u32;
    let panel_h = 320u32;
    let width = panel_w * runs.len() as u32;
    let height = panel_h * 2 + 40;
    render(path, width, height, |root| {
        let (title, body) = root.split_vertically(40);
        let text = if runs.len() == 1 {
            format!(
                "{}: training curves (best epoch by {})",
                runs[0].name, runs[0].monitor
            )
        } else {
            format!("training curves of {} runs", runs.len())
        };
        title.titled(&text, font(20)).map_err(err).map(|_| ())?;
        let columns = body.split_evenly((1, runs.len()));
        for (run, column) in runs.iter().zip(columns) {
            let rows = column.split_evenly((2, 1));
            let best = run.best();
            for (i, (panel_title, cols)) in run.panels().into_iter().enumerate().take(2) {
                let caption = if runs.len() > 1 {
                    format!("{}: {panel_title}", run.name)
                } else {
                    panel_title.clone()
                };
                let series: Vec<(String, Vec<(f64, f64)>)> =
                    cols.iter().map(|c| (c.clone(), run.series(c))).collect();
                let mark = best.map(|(e, v)| {
                    let y = if cols.contains(&run.monitor) {
                        Some(v)
                    } else {
                        run.rows
                            .iter()
                            .find(|(ep, _)| *ep == e)
                            .and_then(|(_, r)| cols.iter().rev().find_map(|c| r.get(c).copied()))
                    };
                    (
                        e as f64,
                        y,
                        format!("best epoch {e}: {} {v:.4}", run.monitor),
                    )
                });
                // Losses fall and most metrics rise: keep the legend off the curves' ends.
                let legend = if i == 0 || run.mode == Mode::Min {
                    SeriesLabelPosition::UpperRight
                } else {
                    SeriesLabelPosition::LowerRight
                };
                line_panel(&rows[i], &caption, "epoch", &series, mark.as_ref(), legend)?;
            }
        }
        Ok(())
    })
}

/// The range of `values` with a margin (a unit range around a single value).
fn padded(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span <= f64::EPSILON * hi.abs().max(1.0) {
        let d = hi.abs().max(1.0) * 0.05;
        return (lo - d, hi + d);
    }
    (lo - 0.06 * span, hi + 0.06 * span)
}

/// One line chart: `series` (name, points), an optional marked x (with a point at y when
/// given, and the label in the legend), the legend at `legend`.
fn line_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    caption: &str,
    x_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    mark: Option<&(f64, Option<f64>, String)>,
    legend: SeriesLabelPosition,
) -> Result<()> {
    let (x0, x1) = {
        let (lo, hi) = padded(series.iter().flat_map(|(_, p)| p.iter().map(|(x, _)| *x)));
        (lo.min(0.0).max(lo), hi)
    };
    let (y0, y1) = padded(series.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y)));
    let mut chart = ChartBuilder::on(area)
        .caption(caption, font(16))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .x_label_formatter(&whole)
        .label_style(font(12))
        .axis_desc_style(font(13))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(err)?;
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
            });
        if points.len() <= 60 {
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 2, colour.filled())))
                .map_err(err)?;
        }
    }
    if let Some((x, y, label)) = mark {
        let red = RGBColor(200, 0, 0);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(*x, y0), (*x, y1)],
                6,
                4,
                red.stroke_width(1),
            ))
            .map_err(err)?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], red));
        if let Some(y) = y {
            chart
                .draw_series(std::iter::once(Circle::new((*x, *y), 5, red.filled())))
                .map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .label_font(font(12))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .position(legend)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Tick labels of whole-number axes (epochs, ranks): integers only.
fn whole(x: &f64) -> String {
    if x.fract().abs() < 1e-9 {
        format!("{x:.0}")
    } else {
        String::new()
    }
}

/// Writes `curves.png` into a finished run's directory from its metrics (the trainer does this
/// at the end of every fit with a run directory).
pub fn write_run_curves(
    dir: &Path,
    rows: Vec<(usize, Row)>,
    monitor: &str,
    mode: Mode,
) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into());
    let curves = RunCurves::from_rows(name, rows, monitor, mode)
        .with_context(|| dir.join(METRICS_FILE).display().to_string())?;
    let path = dir.join(CURVES_FILE);
    training_curves(&[curves], &path)?;
    Ok(path)
}

/// The metric a run without a named monitor is judged by: `val_loss` where the run validated,
/// else `train_loss` (lower is better either way).
pub fn default_monitor(rows: &[(usize, Row)]) -> (String, Mode) {
    let validated = rows.iter().any(|(_, r)| r.contains_key("val_loss"));
    let name = if validated { "val_loss" } else { "train_loss" };
    (name.to_string(), Mode::Min)
}

/// The `plot RUN... --out FILE` command of the tools: every run's metrics.csv, side by side,
/// the best epoch by `monitor` (or, without one, by each run's [`default_monitor`]).
pub fn plot_runs(dirs: &[PathBuf], monitor: Option<(&str, Mode)>, out: &Path) -> Result<()> {
    if dirs.is_empty() {
        bail!("give at least one run directory");
    }
    let runs = dirs
        .iter()
        .map(|d| match monitor {
            Some((m, mode)) => RunCurves::load(d, m, mode),
            None => {
                let (name, rows) = RunCurves::read(d)?;
                let (m, mode) = default_monitor(&rows);
                RunCurves::from_rows(name, rows, &m, mode)
                    .with_context(|| d.join(METRICS_FILE).display().to_string())
            }
        })
        .collect::<Result<Vec<_>>>()?;
    training_curves(&runs, out)
}

/// Draws a confusion matrix (rows: true class, columns: predicted), each cell coloured by its
/// share of the true class and labelled with its count.
pub fn confusion_matrix(
    matrix: &[Vec<usize>],
    class_names: &[String],
    title: &str,
    path: &Path,
) -> Result<()> {
    let n = matrix.len();
    if n == 0 || matrix.iter().any(|r| r.len() != n) {
        bail!("a confusion matrix must be square and non-empty");
    }
    let name = |i: usize| class_names.get(i).cloned().unwrap_or_else(|| i.to_string());
    let cell = (480 / n as u32).clamp(24, 80);
    let side = cell * n as u32;
    // Wide enough for the title (about 9 px a character at 18 px) over a small matrix.
    let width = (side + 220).max(9 * title.chars().count() as u32 + 40);
    let height = side + 170;
    render(path, width, height, |root| {
        let root = root.titled(title, font(18)).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(50)
            .y_label_area_size(110)
            .build_cartesian_2d(0..n as i32, n as i32..0)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("predicted")
            .y_desc("true")
            .x_labels(n)
            .y_labels(n)
            .x_label_offset(cell as i32 / 2)
            .y_label_offset(cell as i32 / 2)
            .x_label_formatter(&|i| {
                if (*i as usize) < n {
                    name(*i as usize)
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|i| {
                if (*i as usize) < n {
                    name(*i as usize)
                } else {
                    String::new()
                }
            })
            .label_style(font(12))
            .axis_desc_style(font(13))
            .draw()
            .map_err(err)?;
        let size = (cell as f64 * 0.3).clamp(9.0, 16.0) as u32;
        for (t, row) in matrix.iter().enumerate() {
            let total = row.iter().sum::<usize>().max(1) as f64;
            for (p, &count) in row.iter().enumerate() {
                let share = count as f64 / total;
                let shade = (255.0 * (1.0 - 0.85 * share)) as u8;
                let fill = RGBColor(shade, shade, 255);
                let (x, y) = (p as i32, t as i32);
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x, y), (x + 1, y + 1)],
                        fill.filled(),
                    )))
                    .map_err(err)?;
                let colour = if share > 0.55 { WHITE } else { BLACK };
                let (cx, cy) = chart.backend_coord(&(x, y));
                let style = font(size)
                    .color(&colour)
                    .pos(plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Center,
                        plotters::style::text_anchor::VPos::Center,
                    ));
                root.draw_text(
                    &count.to_string(),
                    &style,
                    (
                        cx + cell as i32 / 2 - root.get_base_pixel().0,
                        cy + cell as i32 / 2 - root.get_base_pixel().1,
                    ),
                )
                .map_err(err)?;
            }
        }
        Ok(())
    })
}

/// File-name suffixes of [`classification_pictures`].
pub const CONFUSION_FILE: &str = "confusion_matrix.png";
/// See [`CONFUSION_FILE`].
pub const RELIABILITY_FILE: &str = "reliability.png";

/// The evaluation pictures of class probabilities `proba` against labels `y_true`: the
/// confusion matrix of the argmax predictions (`<dir>/<prefix>confusion_matrix.png`) and the
/// reliability diagram with 10 bins (`<dir>/<prefix>reliability.png`). Returns both paths.
pub fn classification_pictures(
    dir: &Path,
    prefix: &str,
    title: &str,
    classes: &[String],
    y_true: &[usize],
    proba: &[Vec<f64>],
) -> Result<[PathBuf; 2]> {
    let preds: Vec<usize> = proba.iter().map(|p| crate::metrics::argmax(p)).collect();
    let n = classes.len().max(proba.first().map_or(0, Vec::len));
    let matrix = crate::metrics::confusion_matrix(y_true, &preds, n);
    let accuracy = crate::metrics::accuracy(y_true, &preds);
    let cm = dir.join(format!("{prefix}{CONFUSION_FILE}"));
    confusion_matrix(
        &matrix,
        classes,
        &format!(
            "{title}: confusion matrix (accuracy {accuracy:.4}, n = {})",
            y_true.len()
        ),
        &cm,
    )?;
    let rel = dir.join(format!("{prefix}{RELIABILITY_FILE}"));
    reliability_diagram(y_true, proba, 10, &format!("{title}: reliability"), &rel)?;
    Ok([cm, rel])
}

/// Per-bin statistics of a reliability diagram: equal-width confidence bins `(b/n, (b+1)/n]`
/// (the binning of [`crate::metrics::ece`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ReliabilityBin {
    /// Lower edge.
    pub lower: f64,
    /// Upper edge.
    pub upper: f64,
    /// Predictions in the bin.
    pub count: usize,
    /// Their mean confidence (NaN when empty).
    pub confidence: f64,
    /// Their accuracy (NaN when empty).
    pub accuracy: f64,
}

/// The reliability bins of top-class confidences and hits.
pub fn reliability_bins(
    y_true: &[usize],
    proba: &[Vec<f64>],
    n_bins: usize,
) -> Vec<ReliabilityBin> {
    let mut count = vec![0usize; n_bins];
    let mut conf = vec![0.0; n_bins];
    let mut hits = vec![0.0; n_bins];
    for (row, &t) in proba.iter().zip(y_true) {
        let pred = crate::metrics::argmax(row);
        let c = row[pred];
        let Some(b) = (0..n_bins)
            .find(|&b| c > b as f64 / n_bins as f64 && c <= (b + 1) as f64 / n_bins as f64)
        else {
            continue;
        };
        count[b] += 1;
        conf[b] += c;
        hits[b] += f64::from(u8::from(pred == t));
    }
    (0..n_bins)
        .map(|b| {
            let k = count[b] as f64;
            ReliabilityBin {
                lower: b as f64 / n_bins as f64,
                upper: (b + 1) as f64 / n_bins as f64,
                count: count[b],
                confidence: conf[b] / k,
                accuracy: hits[b] / k,
            }
        })
        .collect()
}

/// Draws a reliability diagram: accuracy per confidence bin (bars) against the diagonal of
/// perfect calibration, the mean confidence of each bin marked, the ECE in the title.
pub fn reliability_diagram(
    y_true: &[usize],
    proba: &[Vec<f64>],
    n_bins: usize,
    title: &str,
    path: &Path,
) -> Result<()> {
    if n_bins == 0 {
        bail!("a reliability diagram needs at least one bin");
    }
    let bins = reliability_bins(y_true, proba, n_bins);
    let ece = crate::metrics::ece(y_true, proba, n_bins);
    let title = format!(
        "{title} (ECE {ece:.4}, {n_bins} bins, n = {})",
        y_true.len()
    );
    render(path, 620, 600, |root| {
        let root = root.titled(&title, font(16)).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("confidence (top-class probability)")
            .y_desc("accuracy")
            .label_style(font(12))
            .axis_desc_style(font(13))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(err)?;
        let blue = PALETTE[0];
        chart
            .draw_series(bins.iter().filter(|b| b.count > 0).map(|b| {
                Rectangle::new(
                    [(b.lower, 0.0), (b.upper, b.accuracy)],
                    blue.mix(0.7).filled(),
                )
            }))
            .map_err(err)?
            .label("accuracy of the bin")
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 14, y + 5)], blue.mix(0.7).filled())
            });
        chart
            .draw_series(bins.iter().filter(|b| b.count > 0).map(|b| {
                Rectangle::new(
                    [(b.lower, 0.0), (b.upper, b.accuracy)],
                    BLACK.stroke_width(1),
                )
            }))
            .map_err(err)?;
        let grey = RGBColor(120, 120, 120);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, 0.0), (1.0, 1.0)],
                6,
                4,
                grey.stroke_width(1),
            ))
            .map_err(err)?
            .label("perfect calibration")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], grey));
        let red = RGBColor(200, 0, 0);
        chart
            .draw_series(
                bins.iter().filter(|b| b.count > 0).map(|b| {
                    Circle::new(((b.lower + b.upper) / 2.0, b.confidence), 4, red.filled())
                }),
            )
            .map_err(err)?
            .label("mean confidence of the bin")
            .legend(move |(x, y)| Circle::new((x + 7, y), 4, red.filled()));
        chart
            .configure_series_labels()
            .label_font(font(12))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(err)?;
        Ok(())
    })
}

/// Draws CMC curves: rank-k accuracy (`cmc[k-1]`, in [0, 1]) for k = 1..=`cmc.len()`, one
/// line per (name, curve), with its rank-1/5/10/20 accuracies in the legend.
pub fn cmc_curves(curves: &[(String, Vec<f64>)], title: &str, path: &Path) -> Result<()> {
    if curves.is_empty() || curves.iter().any(|(_, c)| c.is_empty()) {
        bail!("no CMC curve to draw (an empty curve)");
    }
    let longest = curves.iter().map(|(_, c)| c.len()).max().unwrap_or(1);
    let lowest = curves
        .iter()
        .map(|(_, c)| c[0])
        .fold(f64::INFINITY, f64::min);
    render(path, 720, 500, |root| {
        let root = root.titled(title, font(17)).map_err(err)?;
        let y0 = ((lowest - 0.05) * 20.0).floor().max(0.0) / 20.0;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(1.0..longest.max(2) as f64, y0..1.0)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("rank k")
            .x_label_formatter(&whole)
            .y_desc("rank-k accuracy")
            .label_style(font(12))
            .axis_desc_style(font(13))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(err)?;
        for (i, (name, cmc)) in curves.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let points: Vec<(f64, f64)> = cmc
                .iter()
                .enumerate()
                .map(|(k, v)| ((k + 1) as f64, *v))
                .collect();
            let ranks: Vec<String> = [1usize, 5, 10, 20]
                .into_iter()
                .filter(|&k| k <= cmc.len())
                .map(|k| format!("R{k} {:.1}%", 100.0 * cmc[k - 1]))
                .collect();
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(err)?
                .label(format!("{name}: {}", ranks.join(", ")))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 2, colour.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .label_font(font(12))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(err)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<(usize, Row)> {
        (0..8)
            .map(|e| {
                let e_f = e as f64;
                let mut r = Row::new();
                r.insert("train_loss".into(), 1.0 / (1.0 + e_f));
                r.insert("train_acc".into(), 0.5 + 0.05 * e_f);
                r.insert("lr".into(), 0.01);
                if e % 2 == 1 || e == 7 {
                    r.insert(
                        "val_loss".into(),
                        0.8 - 0.05 * e_f + 0.01 * (e_f - 4.0).powi(2),
                    );
                    r.insert(
                        "val_acc".into(),
                        0.4 + 0.06 * e_f - 0.005 * (e_f - 5.0).powi(2),
                    );
                }
                (e, r)
            })
            .collect()
    }

    fn png_size(path: &Path) -> (u32, u32) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let img = image::load_from_memory(&bytes).unwrap();
        (img.width(), img.height())
    }

    #[test]
    fn curves_best_epoch_and_picture() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_run_curves(dir.path(), rows(), "val_loss", Mode::Min).unwrap();
        assert_eq!(png_size(&path), (560, 680));
        let c = RunCurves::from_rows("r", rows(), "val_acc", Mode::Max).unwrap();
        assert_eq!(c.best().unwrap().0, 7);
        assert_eq!(c.panels().len(), 2);
    }

    #[test]
    fn missing_monitor_column_is_named() {
        let dir = tempfile::tempdir().unwrap();
        crate::train::metric_log::MetricLog::create(dir.path().join("metrics.csv"))
            .log(0, [("train_loss".to_string(), 1.0)].into())
            .unwrap();
        let e = format!(
            "{:#}",
            RunCurves::load(dir.path(), "mAP", Mode::Max).unwrap_err()
        );
        assert!(e.contains("metrics.csv") && e.contains("`mAP`"), "{e}");
        let e = format!(
            "{:#}",
            RunCurves::load(&dir.path().join("nope"), "mAP", Mode::Max).unwrap_err()
        );
        assert!(e.contains("nope") && e.contains("does not exist"), "{e}");
    }

    #[test]
    fn evaluation_pictures() {
        let dir = tempfile::tempdir().unwrap();
        let cm = dir.path().join("cm.png");
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        confusion_matrix(
            &[vec![5, 1, 0], vec![2, 7, 1], vec![0, 0, 9]],
            &names,
            "test",
            &cm,
        )
        .unwrap();
        png_size(&cm);
        let y = vec![0, 1, 1, 0, 1];
        let p = vec![
            vec![0.9, 0.1],
            vec![0.2, 0.8],
            vec![0.6, 0.4],
            vec![0.55, 0.45],
            vec![0.3, 0.7],
        ];
        let bins = reliability_bins(&y, &p, 10);
        assert_eq!(bins.iter().map(|b| b.count).sum::<usize>(), 5);
        assert_eq!(bins[5].count, 2); // 0.55 and 0.6
        assert_eq!(bins[5].accuracy, 0.5);
        let rel = dir.path().join("rel.png");
        reliability_diagram(&y, &p, 10, "test", &rel).unwrap();
        assert_eq!(png_size(&rel), (620, 600));
        let cmc: Vec<f64> = (0..50).map(|k| 1.0 - 0.5 / (k as f64 + 1.0)).collect();
        let path = dir.path().join("cmc.png");
        let other: Vec<f64> = cmc.iter().map(|v| v * 0.9).collect();
        cmc_curves(&[("a".into(), cmc), ("b".into(), other)], "test", &path).unwrap();
        assert_eq!(png_size(&path), (720, 500));
        assert!(cmc_curves(&[], "test", &path).is_err());
    }
}
