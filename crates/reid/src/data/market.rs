//! Market1501 and DukeMTMC-reID (the reference's
//! [`datasets/market1501.py`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/datasets/market1501.py) and
//! [`datasets/dukemtmcreid.py`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/datasets/dukemtmcreid.py)).
//!
//! Both datasets keep their images in three flat directories, `bounding_box_train` (train),
//! `query` and `bounding_box_test` (gallery), and encode identity and camera in the file name:
//! `0002_c1s1_000451_03.jpg` is pid 2 seen by camera 1.
//!
//! Parsing rules (the reference's, with the deviations noted):
//!
//! * files: the `*.jpg` children of each directory. The reference takes them in `glob` order
//!   (file-system order); here they are **sorted by file name** so every run sees the same list;
//! * the regex `([-\d]+)_c(\d)` is searched in the **file name only** (the reference searches the
//!   whole path, so a directory called e.g. `12_c3` would hijack it). Digits are ASCII;
//! * Market1501: pid −1 ("junk") is dropped from every split, other pids must lie in 0..=1501
//!   (pid 0, the "distractor" images, is kept as an ordinary pid), cameras in 1..=6;
//! * DukeMTMC-reID: no pid filtering (Duke has no junk), cameras in 1..=8;
//! * camid = camera − 1 (0-based);
//! * train pids are relabelled 0..N−1 in ascending pid order (the reference enumerates a Python
//!   set; any bijection trains the same, ascending is deterministic); query and gallery keep the
//!   raw pids.
//!
//! The reference's `assert`s are errors here, naming the file.

use std::path::Path;
use std::sync::LazyLock;

use anyhow::{Context, Result, bail};
use regex::Regex;

use super::images::list_jpgs;
use super::{ReidDataset, Sample, relabel_ascending};

static NAME_PATTERN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"([-0-9]+)_c([0-9])").expect("valid regex"));

/// Parses `(pid, camera)` from a Market/Duke file name (the camera is the 1-based digit of the
/// name). Errors when the pattern is absent or the pid is not an integer.
pub fn parse_market_name(file_name: &str) -> Result<(i64, i64)> {
    let caps = NAME_PATTERN.captures(file_name).with_context(|| {
        format!("file name {file_name} does not match the pattern <pid>_c<camera> (e.g. 0002_c1s1_000451_03.jpg)")
    })?;
    let pid: i64 = caps[1].parse().with_context(|| {
        format!(
            "file name {file_name}: pid '{}' is not an integer",
            &caps[1]
        )
    })?;
    let cam: i64 = caps[2].parse().expect("one ASCII digit");
    Ok((pid, cam))
}

/// Dataset-specific rules of the Market-style layout.
struct Layout {
    name: &'static str,
    subdir: &'static str,
    drop_junk: bool,
    pid_range: Option<(i64, i64)>,
    max_cam: i64,
}

const MARKET: Layout = Layout {
    name: "Market1501",
    subdir: "market1501",
    drop_junk: true,
    pid_range: Some((0, 1501)),
    max_cam: 6,
};

const DUKE: Layout = Layout {
    name: "DukeMTMC-reID",
    subdir: "DukeMTMC-reID",
    drop_junk: false,
    pid_range: None,
    max_cam: 8,
};

/// Market1501 from `<root>/market1501/{bounding_box_train,query,bounding_box_test}`.
pub fn market1501(root: &Path) -> Result<ReidDataset> {
    load_layout(root, &MARKET)
}

/// DukeMTMC-reID from `<root>/DukeMTMC-reID/{bounding_box_train,query,bounding_box_test}`.
pub fn dukemtmc(root: &Path) -> Result<ReidDataset> {
    load_layout(root, &DUKE)
}

fn load_layout(root: &Path, layout: &Layout) -> Result<ReidDataset> {
    let base = root.join(layout.subdir);
    let dirs = [
        base.join("bounding_box_train"),
        base.join("query"),
        base.join("bounding_box_test"),
    ];
    for dir in &dirs {
        if !dir.is_dir() {
            bail!(
                "{} directory {} does not exist (expected <ROOT_DIR>/{}/{{bounding_box_train,query,bounding_box_test}} with ROOT_DIR = {})",
                layout.name,
                dir.display(),
                layout.subdir,
                root.display()
            );
        }
    }
    let mut train = process_dir(&dirs[0], layout)?;
    let query = process_dir(&dirs[1], layout)?;
    let gallery = process_dir(&dirs[2], layout)?;
    let num_classes = relabel_ascending(&mut train);
    Ok(ReidDataset {
        train,
        query,
        gallery,
        num_classes,
    })
}

fn process_dir(dir: &Path, layout: &Layout) -> Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for path in list_jpgs(dir)? {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (pid, cam) =
            parse_market_name(&name).with_context(|| format!("in {}", path.display()))?;
        if layout.drop_junk && pid == -1 {
            continue;
        }
        if let Some((lo, hi)) = layout.pid_range
            && !(lo..=hi).contains(&pid)
        {
            bail!(
                "{}: pid {pid} outside the {} range {lo}..={hi}",
                path.display(),
                layout.name
            );
        }
        if !(1..=layout.max_cam).contains(&cam) {
            bail!(
                "{}: camera {cam} outside the {} range 1..={}",
                path.display(),
                layout.name,
                layout.max_cam
            );
        }
        samples.push(Sample {
            path,
            pid,
            camid: cam - 1,
        });
    }
    if samples.is_empty() {
        bail!(
            "{} split {} holds no usable images (*.jpg files named <pid>_c<camera>..., junk pid -1 excluded)",
            layout.name,
            dir.display()
        );
    }
    Ok(samples)
}
