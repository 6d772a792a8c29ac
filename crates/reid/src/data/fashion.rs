//! Fashion-MNIST as a small Market1501-layout retrieval set (`datasets/fashion-mnist-reid`).
//!
//! Source: the Debian package `dataset-fashion-mnist` (the four IDX files of Zalando's
//! Fashion-MNIST, MIT licence). [`convert_fashion_mnist`] turns them into
//! `<out_root>/market1501/{bounding_box_train,query,bounding_box_test}` so that
//! [`market1501`](super::market1501) loads the result like any Market1501 copy.
//!
//! The rule (deterministic, no randomness): the 10 classes are the identities, pid = class + 1
//! (pid 0 is Market1501's distractor label, so it is avoided). For every class, in source-file
//! order:
//!
//! * original **train** file, camera 1: the first `train_per_class` images go to
//!   `bounding_box_train`, the next `gallery_from_train_per_class` to `bounding_box_test`;
//! * original **test** (`t10k`) file, camera 2: the first `query_per_class` images go to `query`,
//!   the next `gallery_from_test_per_class` to `bounding_box_test`.
//!
//! Every image is used at most once, so the splits are disjoint. All identities appear in train
//! and in test ("closed set", unlike person ReID's disjoint identities): with only 10 classes, a
//! disjoint split would leave 5 training identities and a 5-way retrieval task, too small to learn
//! a transferable embedding or to tell models apart. Queries all come from camera 2, so the
//! evaluation's same-pid-same-camera removal drops the camera-2 gallery images of the query's own
//! class (as Market1501 drops same-camera matches) while they remain as negatives for the other
//! classes' queries; the camera-1 gallery images are the matches.
//!
//! Images keep their 28×28 size and are written as RGB JPEGs (grey replicated into three
//! channels), named `{pid:04}_c{cam}s1_{idx:06}_00.jpg` where `idx` is the image's 0-based index
//! in its source file.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use image::codecs::jpeg::JpegEncoder;
use image::{Rgb, RgbImage};

/// How many images of each class go where (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FashionSpec {
    /// Training images per class, from the original train file (camera 1).
    pub train_per_class: usize,
    /// Query images per class, from the original test file (camera 2).
    pub query_per_class: usize,
    /// Gallery images per class from the original train file (camera 1, the matches).
    pub gallery_from_train_per_class: usize,
    /// Gallery images per class from the original test file (camera 2).
    pub gallery_from_test_per_class: usize,
    /// JPEG quality (1..=100).
    pub jpeg_quality: u8,
}

impl Default for FashionSpec {
    /// The bundled set: 100 train, 10 query and 20 + 20 gallery images per class.
    fn default() -> Self {
        Self {
            train_per_class: 100,
            query_per_class: 10,
            gallery_from_train_per_class: 20,
            gallery_from_test_per_class: 20,
            jpeg_quality: 90,
        }
    }
}

/// What [`convert_fashion_mnist`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertSummary {
    /// Identities (classes).
    pub classes: usize,
    /// Images in `bounding_box_train`.
    pub train: usize,
    /// Images in `query`.
    pub query: usize,
    /// Images in `bounding_box_test`.
    pub gallery: usize,
    /// Total size of the written images in bytes.
    pub bytes: u64,
    /// The four IDX files read (train images, train labels, test images, test labels).
    pub sources: Vec<PathBuf>,
}

/// Images of an IDX file (`idx3-ubyte`): `count` row-major `rows × cols` 8-bit images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// `count · rows · cols` pixels.
    pub pixels: Vec<u8>,
}

impl IdxImages {
    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.rows * self.cols;
        &self.pixels[i * n..(i + 1) * n]
    }
}

/// Reads a file, gunzipping it when it starts with the gzip magic bytes.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .with_context(|| format!("{} is not a valid gzip file", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(bytes: &[u8], at: usize, path: &Path) -> Result<usize> {
    let b = bytes
        .get(at..at + 4)
        .with_context(|| format!("{}: truncated IDX header", path.display()))?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// Reads an IDX image file (`*-images-idx3-ubyte`, optionally gzipped).
pub fn read_idx_images(path: &Path) -> Result<IdxImages> {
    let bytes = read_maybe_gz(path)?;
    let magic = be_u32(&bytes, 0, path)?;
    ensure!(
        magic == 0x0803,
        "{}: not an IDX file of 8-bit images (magic {magic:#010x}, expected 0x00000803)",
        path.display()
    );
    let count = be_u32(&bytes, 4, path)?;
    let rows = be_u32(&bytes, 8, path)?;
    let cols = be_u32(&bytes, 12, path)?;
    let expected = count * rows * cols;
    ensure!(
        bytes.len() == 16 + expected,
        "{}: {count} images of {rows}×{cols} need {expected} pixel bytes, found {}",
        path.display(),
        bytes.len().saturating_sub(16)
    );
    Ok(IdxImages {
        count,
        rows,
        cols,
        pixels: bytes[16..].to_vec(),
    })
}

/// Reads an IDX label file (`*-labels-idx1-ubyte`, optionally gzipped).
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_maybe_gz(path)?;
    let magic = be_u32(&bytes, 0, path)?;
    ensure!(
        magic == 0x0801,
        "{}: not an IDX label file (magic {magic:#010x}, expected 0x00000801)",
        path.display()
    );
    let count = be_u32(&bytes, 4, path)?;
    ensure!(
        bytes.len() == 8 + count,
        "{}: {count} labels announced, {} found",
        path.display(),
        bytes.len().saturating_sub(8)
    );
    Ok(bytes[8..].to_vec())
}

/// Finds `<stem>` or `<stem>.gz` anywhere under `dir` (first match in sorted order).
fn find_idx(dir: &Path, stem: &str) -> Result<PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    let mut found = Vec::new();
    while let Some(d) = stack.pop() {
        let entries =
            fs::read_dir(&d).with_context(|| format!("cannot list directory {}", d.display()))?;
        for entry in entries {
            let path = entry
                .with_context(|| format!("cannot list directory {}", d.display()))?
                .path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == stem || n == format!("{stem}.gz"))
            {
                found.push(path);
            }
        }
    }
    found.sort();
    found.into_iter().next().with_context(|| {
        format!(
            "{stem}(.gz) not found under {} (extract the Debian package dataset-fashion-mnist \
             there: apt-get download dataset-fashion-mnist && dpkg-deb -x <deb> <dir>)",
            dir.display()
        )
    })
}

/// One image to write.
struct Planned {
    split: &'static str,
    pid: usize,
    cam: usize,
    source_index: usize,
    from_test_file: bool,
}

fn plan_split(
    labels: &[u8],
    classes: usize,
    takes: &[(usize, &'static str)],
    cam: usize,
    from_test_file: bool,
    file: &Path,
) -> Result<Vec<Planned>> {
    let needed: usize = takes.iter().map(|(n, _)| n).sum();
    let mut out = Vec::new();
    for class in 0..classes {
        let indices: Vec<usize> = labels
            .iter()
            .enumerate()
            .filter(|(_, l)| usize::from(**l) == class)
            .map(|(i, _)| i)
            .take(needed)
            .collect();
        if indices.len() < needed {
            bail!(
                "{}: class {class} has {} images, the spec needs {needed}",
                file.display(),
                indices.len()
            );
        }
        let mut it = indices.into_iter();
        for &(n, split) in takes {
            for source_index in it.by_ref().take(n) {
                out.push(Planned {
                    split,
                    pid: class + 1,
                    cam,
                    source_index,
                    from_test_file,
                });
            }
        }
    }
    Ok(out)
}

/// Converts the Fashion-MNIST IDX files found under `src_dir` (an extracted
/// `dataset-fashion-mnist` Debian package, or any directory holding the four files, gzipped or
/// not) into a Market1501-layout retrieval set under `<out_root>/market1501/` (see the module
/// docs for the rule).
///
/// The set is written into a temporary sibling directory and moved into place at the end, so an
/// interrupted run leaves no half-written dataset; an existing `<out_root>/market1501` is
/// replaced.
pub fn convert_fashion_mnist(
    src_dir: &Path,
    out_root: &Path,
    spec: &FashionSpec,
) -> Result<ConvertSummary> {
    ensure!(
        (1..=100).contains(&spec.jpeg_quality),
        "JPEG quality must be in 1..=100, got {}",
        spec.jpeg_quality
    );
    let sources = vec![
        find_idx(src_dir, "train-images-idx3-ubyte")?,
        find_idx(src_dir, "train-labels-idx1-ubyte")?,
        find_idx(src_dir, "t10k-images-idx3-ubyte")?,
        find_idx(src_dir, "t10k-labels-idx1-ubyte")?,
    ];
    let train_images = read_idx_images(&sources[0])?;
    let train_labels = read_idx_labels(&sources[1])?;
    let test_images = read_idx_images(&sources[2])?;
    let test_labels = read_idx_labels(&sources[3])?;
    ensure!(
        train_images.count == train_labels.len() && test_images.count == test_labels.len(),
        "image and label counts differ ({} vs {} train, {} vs {} test)",
        train_images.count,
        train_labels.len(),
        test_images.count,
        test_labels.len()
    );
    let classes = usize::from(train_labels.iter().copied().max().unwrap_or(0)) + 1;

    let mut plan = plan_split(
        &train_labels,
        classes,
        &[
            (spec.train_per_class, "bounding_box_train"),
            (spec.gallery_from_train_per_class, "bounding_box_test"),
        ],
        1,
        false,
        &sources[1],
    )?;
    plan.extend(plan_split(
        &test_labels,
        classes,
        &[
            (spec.query_per_class, "query"),
            (spec.gallery_from_test_per_class, "bounding_box_test"),
        ],
        2,
        true,
        &sources[3],
    )?);

    fs::create_dir_all(out_root)
        .with_context(|| format!("cannot create {}", out_root.display()))?;
    let final_dir = out_root.join("market1501");
    let staging = out_root.join(format!(".market1501.partial-{}", std::process::id()));
    if staging.exists() {
        fs::remove_dir_all(&staging)
            .with_context(|| format!("cannot remove {}", staging.display()))?;
    }
    let result = write_plan(
        &plan,
        &train_images,
        &test_images,
        &staging,
        spec.jpeg_quality,
    );
    let bytes = match result {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir)
            .with_context(|| format!("cannot replace {}", final_dir.display()))?;
    }
    fs::rename(&staging, &final_dir).with_context(|| {
        format!(
            "cannot move {} to {}",
            staging.display(),
            final_dir.display()
        )
    })?;
    let count = |split: &str| plan.iter().filter(|p| p.split == split).count();
    Ok(ConvertSummary {
        classes,
        train: count("bounding_box_train"),
        query: count("query"),
        gallery: count("bounding_box_test"),
        bytes,
        sources,
    })
}

fn write_plan(
    plan: &[Planned],
    train_images: &IdxImages,
    test_images: &IdxImages,
    dir: &Path,
    quality: u8,
) -> Result<u64> {
    for split in ["bounding_box_train", "query", "bounding_box_test"] {
        fs::create_dir_all(dir.join(split))
            .with_context(|| format!("cannot create {}", dir.join(split).display()))?;
    }
    let mut total = 0u64;
    for item in plan {
        let source = if item.from_test_file {
            test_images
        } else {
            train_images
        };
        let grey = source.image(item.source_index);
        let img = RgbImage::from_fn(source.cols as u32, source.rows as u32, |x, y| {
            let v = grey[y as usize * source.cols + x as usize];
            Rgb([v, v, v])
        });
        let mut bytes = Vec::new();
        JpegEncoder::new_with_quality(&mut bytes, quality).encode_image(&img)?;
        let name = format!(
            "{:04}_c{}s1_{:06}_00.jpg",
            item.pid, item.cam, item.source_index
        );
        let path = dir.join(item.split).join(name);
        fs::write(&path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
        total += bytes.len() as u64;
    }
    Ok(total)
}
