//! moola's run configuration on kiln's yacs-style config.
//!
//! Keys are lower-case like the reference's Hydra config (`seed`, `cv_folds`); each model has a
//! `model` section (architecture hyper-parameters) and a `train` section (the recipe), with the
//! reference defaults. A YAML file (`--config-file`) merges over the defaults, then `KEY VALUE`
//! pairs on the command line:
//!
//! ```text
//! moola train --model cnn_transformer --data train.parquet \
//!     cnn_transformer.train.n_epochs 80 cnn_transformer.model.dropout 0.3 seed 7
//! ```
//!
//! Unknown keys and type mismatches are errors naming the key. The final configuration is
//! written into each run directory as `config.yaml`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::classical::MiniRocketConfig;
use crate::model::{CnnTransformerConfig, ModelSpec, RwkvTsConfig, SimpleLstmConfig};
use crate::scaling::InputScaling;
use crate::train::{SmallData, TrainConfig};

/// The deep models, each with a `model` and a `train` section.
pub const DEEP_MODELS: [&str; 3] = ["simple_lstm", "cnn_transformer", "rwkv_ts"];

/// Every input-scaling key (what `--scaling` sets).
pub const SCALING_KEYS: [&str; 6] = [
    "simple_lstm.train.scaling",
    "cnn_transformer.train.scaling",
    "rwkv_ts.train.scaling",
    "minirocket.scaling",
    "pretrain.masked_lstm.scaling",
    "pretrain.ts_tcc.scaling",
];

/// One model's sections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection<M> {
    /// Architecture hyper-parameters.
    pub model: M,
    /// Training recipe.
    pub train: TrainConfig,
}

/// Where files go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paths {
    /// Canonical data directory (`ingest` writes `processed/train.parquet` here).
    pub data_dir: PathBuf,
    /// Models, metrics and run directories.
    pub artifacts_dir: PathBuf,
}

/// Self-supervised pre-training recipes (`moola pretrain`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PretrainSection {
    /// Masked BiLSTM autoencoder (SimpleLSTM's encoder).
    pub masked_lstm: crate::pretrain::masked_lstm::MaskedLstmPretrainConfig,
    /// TS-TCC (the CNN-Transformer's encoder).
    pub ts_tcc: crate::pretrain::ts_tcc::TsTccPretrainConfig,
}

/// Which defaults the models' `train` sections start from (the top-level `recipe` key,
/// `--recipe` on the command line). Keys set in a file or on the command line override the
/// preset's values either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum RecipePreset {
    /// `small_data` for training sets of at most `small_data.max_windows` windows, `default`
    /// for larger ones.
    #[default]
    Auto,
    /// The reference's hyper-parameters with the default input scaling
    /// ([`TrainConfig::for_model`]).
    Default,
    /// The small-data recipe for the training set's size ([`SmallData::recipe`]).
    SmallData,
    /// The reference recipe exactly: raw inputs, constant learning rate
    /// ([`TrainConfig::reference`]); pre-training on raw windows too.
    Reference,
}

/// Where a configuration came from (to rebuild it over other defaults); never serialised and
/// never part of a comparison.
#[derive(Debug, Clone, Default)]
struct Origin {
    file: Option<PathBuf>,
    overrides: Vec<String>,
}

impl PartialEq for Origin {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoolaConfig {
    /// The defaults every model's `train` section (and the pre-training's scaling) start from:
    /// `auto`, `default`, `small_data` or `reference` (explicit keys still override them).
    #[serde(default)]
    pub recipe: RecipePreset,
    /// The small-data rule: when `recipe auto` picks it and what it sets.
    #[serde(default)]
    pub small_data: SmallData,
    /// Seed of every random stream (reference: 1337).
    pub seed: u64,
    /// Folds of `evaluate` (reference: 5).
    pub cv_folds: usize,
    /// Held-out fraction of `train` when no test file is given (reference: 0.2).
    pub test_split: f64,
    /// File locations.
    pub paths: Paths,
    /// SimpleLSTM.
    pub simple_lstm: ModelSection<SimpleLstmConfig>,
    /// CNN-Transformer.
    pub cnn_transformer: ModelSection<CnnTransformerConfig>,
    /// RWKV-TS.
    pub rwkv_ts: ModelSection<RwkvTsConfig>,
    /// Pre-training recipes.
    pub pretrain: PretrainSection,
    /// When a diverging run stops with an error (`divergence.terminate_on_nan`, default True;
    /// `divergence.factor`, default 1e4, 0 = off): for every training and pre-training run.
    pub divergence: kiln::trainer::DivergenceCheck,
    /// MiniRocket + ridge (`minirocket`; its `seed` is the run's).
    #[serde(default)]
    pub minirocket: MiniRocketConfig,
    #[serde(skip)]
    origin: Origin,
}

impl Default for MoolaConfig {
    fn default() -> Self {
        let env_path = |var: &str, default: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(default))
        };
        Self {
            recipe: RecipePreset::Auto,
            small_data: SmallData::default(),
            seed: kiln::seed::DEFAULT_SEED,
            cv_folds: 5,
            test_split: 0.2,
            paths: Paths {
                data_dir: env_path("MOOLA_DATA_DIR", "data"),
                artifacts_dir: env_path("MOOLA_ARTIFACTS_DIR", "artifacts"),
            },
            simple_lstm: ModelSection {
                model: SimpleLstmConfig::default(),
                train: TrainConfig::for_model("simple_lstm"),
            },
            cnn_transformer: ModelSection {
                model: CnnTransformerConfig::default(),
                train: TrainConfig::for_model("cnn_transformer"),
            },
            rwkv_ts: ModelSection {
                model: RwkvTsConfig::default(),
                train: TrainConfig::for_model("rwkv_ts"),
            },
            pretrain: PretrainSection::default(),
            divergence: kiln::trainer::DivergenceCheck::default(),
            minirocket: MiniRocketConfig::default(),
            origin: Origin::default(),
        }
    }
}

impl MoolaConfig {
    /// Defaults, then the YAML file, then `KEY VALUE` overrides. With `recipe reference` (in
    /// the file or the overrides) the defaults are [`MoolaConfig::reference`]'s; the size-dependent
    /// presets (`auto`, `small_data`) are resolved by [`MoolaConfig::for_windows`] once the
    /// training set's size is known (until then the models hold the `default` recipe).
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let mut cfg: Self = kiln::config::load(file, overrides)?;
        cfg.origin = Origin {
            file: file.map(Path::to_path_buf),
            overrides: overrides.to_vec(),
        };
        if cfg.recipe == RecipePreset::Reference {
            cfg = cfg.rebuild(Self::reference())?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// This configuration's file and overrides again, over other defaults.
    fn rebuild(&self, defaults: Self) -> Result<Self> {
        let mut cfg: Self = kiln::config::Builder::from_defaults(&defaults)
            .file(self.origin.file.as_deref())?
            .overrides(&self.origin.overrides)?
            .build()?;
        cfg.origin = self.origin.clone();
        cfg.validate()?;
        Ok(cfg)
    }

    /// The configuration for a training set of `n` windows: with `recipe small_data`, or
    /// `recipe auto` and `n ≤ small_data.max_windows`, every model's `train` section starts
    /// from the small-data recipe for `n` ([`SmallData::recipe`]) and the file's and command
    /// line's keys apply over it; otherwise the configuration is unchanged.
    pub fn for_windows(&self, n: usize) -> Result<Self> {
        if !self.uses_small_data(n) {
            return Ok(self.clone());
        }
        let rule = &self.small_data;
        let mut defaults = Self::default();
        defaults.simple_lstm.train = rule.recipe("simple_lstm", n);
        defaults.cnn_transformer.train = rule.recipe("cnn_transformer", n);
        defaults.rwkv_ts.train = rule.recipe("rwkv_ts", n);
        self.rebuild(defaults)
    }

    /// Whether [`MoolaConfig::for_windows`] gives the small-data recipe for `n` windows.
    pub fn uses_small_data(&self, n: usize) -> bool {
        match self.recipe {
            RecipePreset::SmallData => true,
            RecipePreset::Auto => self.small_data.applies(n),
            RecipePreset::Default | RecipePreset::Reference => false,
        }
    }

    /// The reference's configuration: every model's [`TrainConfig::reference`] recipe and
    /// pre-training on raw windows.
    pub fn reference() -> Self {
        let mut cfg = Self {
            recipe: RecipePreset::Reference,
            ..Self::default()
        };
        cfg.simple_lstm.train = TrainConfig::reference("simple_lstm");
        cfg.cnn_transformer.train = TrainConfig::reference("cnn_transformer");
        cfg.rwkv_ts.train = TrainConfig::reference("rwkv_ts");
        cfg.pretrain.masked_lstm.scaling = InputScaling::None;
        cfg.pretrain.ts_tcc.scaling = InputScaling::None;
        cfg
    }

    fn validate(&self) -> Result<()> {
        if self.cv_folds < 2 {
            anyhow::bail!("cv_folds must be at least 2, got {}", self.cv_folds);
        }
        if !(self.test_split > 0.0 && self.test_split < 1.0) {
            anyhow::bail!("test_split must be in (0, 1), got {}", self.test_split);
        }
        self.small_data.validate()
    }

    /// The model spec and recipe of a model by name (the recipe carries the run seed).
    pub fn model(&self, name: &str) -> Result<(ModelSpec, TrainConfig)> {
        let (spec, mut train) = match ModelSpec::from_name(name)? {
            ModelSpec::SimpleLstm(_) => (
                ModelSpec::SimpleLstm(self.simple_lstm.model.clone()),
                self.simple_lstm.train.clone(),
            ),
            ModelSpec::CnnTransformer(_) => (
                ModelSpec::CnnTransformer(self.cnn_transformer.model.clone()),
                self.cnn_transformer.train.clone(),
            ),
            ModelSpec::RwkvTs(_) => (
                ModelSpec::RwkvTs(self.rwkv_ts.model.clone()),
                self.rwkv_ts.train.clone(),
            ),
        };
        train.seed = self.seed;
        Ok((spec, train))
    }

    /// An unfitted classical model by name (`logreg`, `rf`, `xgb`, `minirocket`) with the run's
    /// seed (and, for MiniRocket, this configuration's `minirocket` section).
    pub fn classical(&self, name: &str) -> Result<crate::classical::ClassicalModel> {
        use crate::classical::{ClassicalModel, MINIROCKET, MiniRocket, MiniRocketConfig};
        if name == MINIROCKET {
            return Ok(ClassicalModel::MiniRocket(MiniRocket::new(
                MiniRocketConfig {
                    seed: self.seed,
                    ..self.minirocket.clone()
                },
            )));
        }
        ClassicalModel::from_name(name, self.seed)
    }

    /// The training recipe of the model `name`, to change it in place.
    pub fn train_mut(&mut self, name: &str) -> Result<&mut TrainConfig> {
        Ok(match ModelSpec::from_name(name)? {
            ModelSpec::SimpleLstm(_) => &mut self.simple_lstm.train,
            ModelSpec::CnnTransformer(_) => &mut self.cnn_transformer.train,
            ModelSpec::RwkvTs(_) => &mut self.rwkv_ts.train,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InnerWindow;

    fn ov(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_reference_recipe_is_one_value_away() {
        let cfg = MoolaConfig::load(None, &[]).unwrap();
        assert_eq!(cfg.recipe, RecipePreset::Auto);
        let (_, train) = cfg.model("cnn_transformer").unwrap();
        assert_eq!(
            train,
            TrainConfig::for_model("cnn_transformer").with_seed(1337)
        );
        let reference = MoolaConfig::load(None, &ov(&["recipe", "reference"])).unwrap();
        for name in ["simple_lstm", "cnn_transformer", "rwkv_ts"] {
            let (_, train) = reference.model(name).unwrap();
            assert_eq!(train, TrainConfig::reference(name).with_seed(1337));
            assert_eq!(train.scaling, InputScaling::None);
            // The reference recipe does not depend on the data's size.
            let (_, small) = reference.for_windows(40).unwrap().model(name).unwrap();
            assert_eq!(small, train);
        }
        assert_eq!(reference.pretrain.ts_tcc.scaling, InputScaling::None);
        assert_eq!(reference.pretrain.masked_lstm.scaling, InputScaling::None);
        // Explicit keys still override the reference defaults, in any order.
        let cfg = MoolaConfig::load(
            None,
            &ov(&[
                "simple_lstm.train.scaling",
                "log_returns",
                "recipe",
                "reference",
            ]),
        )
        .unwrap();
        assert_eq!(cfg.simple_lstm.train.scaling, InputScaling::LogReturns);
        assert_eq!(cfg.rwkv_ts.train.scaling, InputScaling::None);
        let err = MoolaConfig::load(None, &ov(&["recipe", "paper"])).unwrap_err();
        assert!(format!("{err:#}").contains("recipe"), "{err:#}");
    }

    #[test]
    fn auto_picks_the_small_data_recipe_by_size_and_keeps_explicit_keys() {
        use crate::train::LrSchedule;
        let cfg = MoolaConfig::load(
            None,
            &ov(&["simple_lstm.train.n_epochs", "7", "small_data.steps", "400"]),
        )
        .unwrap();
        // 100 windows: batch 25 (4 steps per epoch), 400 steps = 100 epochs; n_epochs was set
        // by hand for SimpleLSTM and stays.
        let small = cfg.for_windows(100).unwrap();
        let (_, lstm) = small.model("simple_lstm").unwrap();
        let (_, rwkv) = small.model("rwkv_ts").unwrap();
        assert_eq!(lstm.n_epochs, 7);
        assert_eq!((rwkv.batch_size, rwkv.n_epochs), (25, 100));
        assert_eq!(rwkv.lr_schedule, LrSchedule::OneCycle);
        assert_eq!((rwkv.mixup_alpha, rwkv.cutmix_prob), (0.0, 0.0));
        let rule = SmallData {
            steps: 400,
            ..SmallData::default()
        };
        assert_eq!(rwkv, rule.recipe("rwkv_ts", 100).with_seed(1337));
        // Above the threshold the configuration is unchanged.
        assert_eq!(cfg.for_windows(5000).unwrap(), cfg);
        assert!(cfg.uses_small_data(1024) && !cfg.uses_small_data(1025));
        // `recipe small_data` forces it, `recipe default` turns it off.
        let forced = MoolaConfig::load(None, &ov(&["recipe", "small_data"])).unwrap();
        let (_, t) = forced.for_windows(5000).unwrap().model("rwkv_ts").unwrap();
        assert_eq!(t.lr_schedule, LrSchedule::OneCycle);
        let off = MoolaConfig::load(None, &ov(&["recipe", "default"])).unwrap();
        assert_eq!(off.for_windows(40).unwrap(), off);
    }

    #[test]
    fn defaults_are_the_reference_ones() {
        let cfg = MoolaConfig::load(None, &[]).unwrap();
        assert_eq!(cfg.seed, 1337);
        assert_eq!(cfg.cv_folds, 5);
        let (spec, train) = cfg.model("rwkv_ts").unwrap();
        assert_eq!(train.early_stopping_patience, 30);
        assert_eq!(train.mixup_alpha, 0.2);
        assert!(!train.temporal_aug.enabled);
        let ModelSpec::RwkvTs(r) = spec else { panic!() };
        assert_eq!((r.d_model, r.n_layers), (128, 4));
        let (_, train) = cfg.model("simple_lstm").unwrap();
        assert_eq!((train.batch_size, train.learning_rate), (512, 5e-4));
    }

    #[test]
    fn overrides_reach_the_model_and_recipe() {
        let cfg = MoolaConfig::load(
            None,
            &ov(&[
                "seed",
                "7",
                "cnn_transformer.train.n_epochs",
                "80",
                "cnn_transformer.model.window",
                "{'start': 10, 'end': 20}",
                "cnn_transformer.train.focal_alpha",
                "[1.0, 1.17]",
                "simple_lstm.train.temporal_aug.per_sample_flips",
                "True",
            ]),
        )
        .unwrap();
        let (spec, train) = cfg.model("cnn_transformer").unwrap();
        assert_eq!(train.seed, 7);
        assert_eq!(train.n_epochs, 80);
        assert_eq!(train.focal_alpha, Some(vec![1.0, 1.17]));
        let ModelSpec::CnnTransformer(c) = spec else {
            panic!()
        };
        assert_eq!(c.window.map(|w| (w.start, w.end)), Some((10, 20)));
        assert!(cfg.simple_lstm.train.temporal_aug.per_sample_flips);
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        let err = MoolaConfig::load(None, &ov(&["simple_lstm.train.n_epoch", "3"])).unwrap_err();
        assert!(
            err.to_string().contains("simple_lstm.train.n_epoch"),
            "{err}"
        );
        let err = MoolaConfig::load(None, &ov(&["cv_folds", "1"])).unwrap_err();
        assert!(err.to_string().contains("cv_folds"), "{err}");
        let err = MoolaConfig::load(None, &ov(&["rwkv_ts.model.d_model", "big"])).unwrap_err();
        assert!(err.to_string().contains("rwkv_ts.model.d_model"), "{err}");
    }

    /// What `moola train` does with a run's configuration: `config.yaml` in the run directory.
    fn dump_and_reload(cfg: &MoolaConfig) -> (String, Result<MoolaConfig>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        kiln::config::dump_yaml(cfg, &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        (text, MoolaConfig::load(Some(&path), &[]))
    }

    #[test]
    fn dumped_config_reloads_to_the_same_config() {
        // The defaults: `None` fields (focal α, windows, encoder path) are dumped as null.
        let defaults = MoolaConfig::load(None, &[]).unwrap();
        let (text, back) = dump_and_reload(&defaults);
        assert!(text.contains("focal_alpha: null"), "{text}");
        assert!(text.contains("window: null"), "{text}");
        assert_eq!(back.unwrap(), defaults);

        // Values everywhere: None where the default has a value, values where it has None,
        // mapping-valued options, nested sections, lists, paths, enums and strings.
        let mut cfg = MoolaConfig::load(
            None,
            &ov(&[
                "seed",
                "7",
                "cv_folds",
                "3",
                "paths.artifacts_dir",
                "runs/art",
                "cnn_transformer.model.window",
                "{'start': 10, 'end': 20}",
                "cnn_transformer.model.cnn_channels",
                "[8, 8, 16]",
                "cnn_transformer.train.focal_alpha",
                "[1.0, 1.17]",
                "cnn_transformer.train.precision",
                "bf16-mixed",
                "simple_lstm.train.encoder.path",
                "enc/encoder",
                "simple_lstm.train.temporal_aug.per_sample_flips",
                "True",
                "rwkv_ts.model.readout",
                "mean",
                "rwkv_ts.train.learning_rate",
                "1e-5",
                "pretrain.masked_lstm.mask_strategy",
                "block",
            ]),
        )
        .unwrap();
        cfg.pretrain.ts_tcc.grad_clip = None;
        let (text, back) = dump_and_reload(&cfg);
        assert!(text.contains("grad_clip: null"), "{text}");
        let back = back.unwrap_or_else(|e| panic!("{e:#}\n{text}"));
        assert_eq!(back, cfg);
        assert_eq!(
            back.cnn_transformer.model.window,
            Some(InnerWindow { start: 10, end: 20 })
        );
        assert_eq!(back.pretrain.ts_tcc.grad_clip, None);

        // A `None` given as an override reaches the config too, like yacs.
        let cfg = MoolaConfig::load(None, &ov(&["pretrain.ts_tcc.grad_clip", "None"])).unwrap();
        assert_eq!(cfg.pretrain.ts_tcc.grad_clip, None);
        // ...but not where the setting is not optional.
        for key in ["simple_lstm.train.n_epochs", "rwkv_ts.train.temporal_aug"] {
            let err = MoolaConfig::load(None, &ov(&[key, "None"])).unwrap_err();
            assert!(format!("{err:#}").contains(&format!("`{key}`")), "{err:#}");
        }
    }

    #[test]
    fn a_reloaded_config_with_an_unknown_key_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        let cfg = MoolaConfig::load(None, &[]).unwrap();
        kiln::config::dump_yaml(&cfg, &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        // A key a newer version (or a typo) added, nested in a section and at the top level.
        for (edited, key) in [
            (
                text.replacen("  train:\n", "  train:\n    n_epoch: 3\n", 1),
                "train.n_epoch",
            ),
            (format!("{text}learning_rate: 0.1\n"), "learning_rate"),
        ] {
            std::fs::write(&path, &edited).unwrap();
            let err = format!("{:#}", MoolaConfig::load(Some(&path), &[]).unwrap_err());
            assert!(
                err.contains(&format!("{key}`")) && err.contains("unknown config key"),
                "{err}"
            );
            assert!(err.contains("config.yaml"), "{err}");
        }
    }

    #[test]
    fn precision_keys_take_lightning_names_and_integers() {
        use kiln::amp::{Precision, PrecisionSetting};
        let cfg = MoolaConfig::load(None, &[]).unwrap();
        assert_eq!(cfg.simple_lstm.train.precision, PrecisionSetting::Auto);
        let cfg = MoolaConfig::load(
            None,
            &ov(&[
                "simple_lstm.train.precision",
                "bf16-mixed",
                "cnn_transformer.train.precision",
                "32",
                "rwkv_ts.train.precision",
                "16",
            ]),
        )
        .unwrap();
        let fixed = PrecisionSetting::Fixed;
        assert_eq!(cfg.simple_lstm.train.precision, fixed(Precision::Bf16Mixed));
        assert_eq!(cfg.cnn_transformer.train.precision, fixed(Precision::F32));
        assert_eq!(cfg.rwkv_ts.train.precision, fixed(Precision::F16Mixed));
        // auto: 16-mixed on CUDA (the reference's use_amp=True), f32 on CPU.
        assert_eq!(
            PrecisionSetting::Auto.resolve(kiln::DeviceKind::Cuda(0)),
            Precision::F16Mixed
        );
        assert_eq!(
            PrecisionSetting::Auto.resolve(kiln::DeviceKind::Cpu),
            Precision::F32
        );
        let err = MoolaConfig::load(None, &ov(&["rwkv_ts.train.precision", "fp8"])).unwrap_err();
        assert!(
            format!("{err:#}").contains("rwkv_ts.train.precision"),
            "{err:#}"
        );
    }
}
