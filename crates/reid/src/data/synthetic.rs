//! A tiny synthetic Market1501-layout dataset for tests and smoke runs.
//!
//! Each identity is a "person" with an identity-dependent upper-body and lower-body colour and a
//! stripe pattern on a noisy grey background; cameras change the brightness, and every image gets
//! its own noise and a small shift. A model can learn the identities from this, and the layout
//! exercises every parsing rule: a junk image (pid −1) in the train and gallery directories, and
//! pid-0 "distractor" images in the gallery.

use std::path::Path;

use anyhow::{Result, ensure};
use image::codecs::jpeg::JpegEncoder;
use image::{Rgb, RgbImage};
use rand::Rng;

/// Size of a synthetic dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticSpec {
    /// Training identities (pids [`SyntheticSpec::train_pids`]).
    pub train_ids: usize,
    /// Query/gallery identities (pids [`SyntheticSpec::test_pids`]).
    pub test_ids: usize,
    /// Cameras 1..=cameras (at most 6, Market1501's range).
    pub cameras: usize,
    /// Training images per identity and camera.
    pub train_per_camera: usize,
    /// Query images per test identity and camera.
    pub query_per_camera: usize,
    /// Gallery images per test identity and camera.
    pub gallery_per_camera: usize,
    /// pid-0 distractor images in the gallery.
    pub distractors: usize,
    /// Image height in pixels.
    pub height: u32,
    /// Image width in pixels.
    pub width: u32,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        Self {
            train_ids: 4,
            test_ids: 3,
            cameras: 2,
            train_per_camera: 2,
            query_per_camera: 1,
            gallery_per_camera: 2,
            distractors: 2,
            height: 32,
            width: 16,
        }
    }
}

impl SyntheticSpec {
    /// The raw training pids, ascending and deliberately not contiguous: 2, 5, 8, ...
    pub fn train_pids(&self) -> Vec<i64> {
        (0..self.train_ids).map(|i| 2 + 3 * i as i64).collect()
    }

    /// The raw query/gallery pids, ascending, after the training pids: 100, 103, ...
    pub fn test_pids(&self) -> Vec<i64> {
        (0..self.test_ids).map(|i| 100 + 3 * i as i64).collect()
    }

    /// Training images after junk removal.
    pub fn num_train(&self) -> usize {
        self.train_ids * self.cameras * self.train_per_camera
    }

    /// Query images.
    pub fn num_query(&self) -> usize {
        self.test_ids * self.cameras * self.query_per_camera
    }

    /// Gallery images after junk removal (distractors included).
    pub fn num_gallery(&self) -> usize {
        self.test_ids * self.cameras * self.gallery_per_camera + self.distractors
    }
}

/// Identity colours: two saturated colours and a stripe period derived from the pid.
fn identity_look(pid: i64) -> ([u8; 3], [u8; 3], u32) {
    let h = kiln::seed::derive(0x5EED, "synthetic-identity", pid as u64);
    let byte = |shift: u32| ((h >> shift) & 0xFF) as u8;
    let upper = [byte(0) | 0x40, byte(8) & 0xBF, byte(16)];
    let lower = [byte(24) & 0x7F, byte(32) | 0x20, byte(40) | 0x80];
    let stripes = 2 + (h >> 48) as u32 % 4;
    (upper, lower, stripes)
}

fn render(spec: &SyntheticSpec, pid: i64, cam: usize, rng: &mut impl Rng) -> RgbImage {
    let (h, w) = (spec.height, spec.width);
    let (upper, lower, stripes) = identity_look(pid);
    let brightness = 0.75 + 0.1 * cam as f32;
    let shift_y = rng.random_range(0..=h / 8) as i64 - (h / 16) as i64;
    let mut img = RgbImage::new(w, h);
    for y in 0..h {
        for x in 0..w {
            let body_y = y as i64 - shift_y;
            let in_body = x >= w / 4 && x < w - w / 4 && body_y >= (h / 8) as i64;
            let base: [u8; 3] = if !in_body {
                [120, 120, 120]
            } else if body_y < (h / 2) as i64 {
                if (body_y as u32 / stripes).is_multiple_of(2) {
                    upper
                } else {
                    upper.map(|v| v / 2)
                }
            } else {
                lower
            };
            let noise: i32 = rng.random_range(-12..=12);
            let px = base.map(|v| ((f32::from(v) * brightness) as i32 + noise).clamp(0, 255) as u8);
            img.put_pixel(x, y, Rgb(px));
        }
    }
    img
}

fn write_jpeg(path: &Path, img: &RgbImage) -> Result<()> {
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(img)?;
    kiln::io::write_atomic(path, &bytes)
}

/// Writes a Market1501-layout dataset under `<root>/market1501/` (see the module docs and
/// [`SyntheticSpec`] for the contents), deterministic from `seed`.
///
/// File names follow Market1501: `{pid:04}_c{cam}s1_{frame:06}_00.jpg`, junk `-1_c1s1_...`.
pub fn write_synthetic_market1501(root: &Path, spec: &SyntheticSpec, seed: u64) -> Result<()> {
    ensure!(
        (1..=6).contains(&spec.cameras),
        "synthetic Market1501 needs 1..=6 cameras, got {}",
        spec.cameras
    );
    ensure!(
        spec.height >= 8 && spec.width >= 4,
        "synthetic images must be at least 8×4 pixels"
    );
    let base = root.join("market1501");
    let train_dir = base.join("bounding_box_train");
    let query_dir = base.join("query");
    let gallery_dir = base.join("bounding_box_test");
    let mut rng = kiln::seed::rng(seed, "synthetic-market1501", 0);
    let mut frame = 0usize;
    let mut emit = |dir: &Path, pid: i64, cam: usize, rng: &mut rand::rngs::StdRng| -> Result<()> {
        frame += 1;
        let name = if pid < 0 {
            format!("{pid}_c{cam}s1_{frame:06}_00.jpg")
        } else {
            format!("{pid:04}_c{cam}s1_{frame:06}_00.jpg")
        };
        let img = render(spec, pid.max(0), cam, rng);
        write_jpeg(&dir.join(name), &img)
    };
    for pid in spec.train_pids() {
        for cam in 1..=spec.cameras {
            for _ in 0..spec.train_per_camera {
                emit(&train_dir, pid, cam, &mut rng)?;
            }
        }
    }
    for pid in spec.test_pids() {
        for cam in 1..=spec.cameras {
            for _ in 0..spec.query_per_camera {
                emit(&query_dir, pid, cam, &mut rng)?;
            }
            for _ in 0..spec.gallery_per_camera {
                emit(&gallery_dir, pid, cam, &mut rng)?;
            }
        }
    }
    for i in 0..spec.distractors {
        emit(&gallery_dir, 0, 1 + i % spec.cameras, &mut rng)?;
    }
    emit(&train_dir, -1, 1, &mut rng)?;
    emit(&gallery_dir, -1, 1, &mut rng)?;
    Ok(())
}
