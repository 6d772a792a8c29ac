//! Set-up shared by the reid integration tests.

use std::path::Path;

use reid::config::ReidConfig;
use reid::data::{SyntheticSpec, write_synthetic_market1501};

/// Writes a synthetic Market1501 tree under `root` (4 training identities, 3 images per camera,
/// one distractor) and returns the `KEY VALUE` pairs of a tiny resnet18 CTL run on it: 32×16
/// images, P = 3, 2 epochs evaluated every epoch, one reproducible run, output in `<root>/logs`.
/// `overrides` replace (or add) pairs.
pub fn tiny_ctl_pairs(root: &Path, overrides: &[(&str, &str)]) -> Vec<String> {
    write_synthetic_market1501(
        root,
        &SyntheticSpec {
            train_ids: 4,
            train_per_camera: 3,
            distractors: 1,
            ..SyntheticSpec::default()
        },
        1,
    )
    .unwrap();
    let root_dir = root.display().to_string();
    let logs = root.join("logs").display().to_string();
    let mut pairs: Vec<(&str, &str)> = vec![
        ("MODEL.NAME", "resnet18"),
        ("MODEL.BACKBONE_EMB_SIZE", "512"),
        ("MODEL.PRETRAINED", "False"),
        ("DATASETS.ROOT_DIR", &root_dir),
        ("INPUT.SIZE_TRAIN", "[32, 16]"),
        ("INPUT.SIZE_TEST", "[32, 16]"),
        ("SOLVER.IMS_PER_BATCH", "3"),
        ("SOLVER.MAX_EPOCHS", "2"),
        ("SOLVER.EVAL_PERIOD", "1"),
        ("SOLVER.BASE_LR", "3.5e-4"),
        ("TEST.IMS_PER_BATCH", "8"),
        ("DATALOADER.USE_RESAMPLING", "False"),
        ("OUTPUT_DIR", &logs),
        ("REPRODUCIBLE", "True"),
        ("REPRODUCIBLE_NUM_RUNS", "1"),
    ];
    for &(key, value) in overrides {
        match pairs.iter_mut().find(|(k, _)| *k == key) {
            Some(pair) => pair.1 = value,
            None => pairs.push((key, value)),
        }
    }
    pairs
        .iter()
        .flat_map(|(k, v)| [k.to_string(), v.to_string()])
        .collect()
}

/// [`tiny_ctl_pairs`] loaded and validated.
#[allow(dead_code)] // not every test binary loads the configuration itself
pub fn tiny_ctl_config(root: &Path, overrides: &[(&str, &str)]) -> ReidConfig {
    let cfg = ReidConfig::load(None, &tiny_ctl_pairs(root, overrides)).unwrap();
    cfg.validate().unwrap();
    cfg
}
