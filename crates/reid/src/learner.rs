//! The library entry point: a validated configuration in, a trained model and its test report
//! out, in the spirit of Burn's `learner.fit(...)`.
//!
//! ```no_run
//! use kiln::backend::{Autodiff, Flex};
//! use reid::{Learner, ReidConfig, StepKind};
//!
//! let cfg = ReidConfig::load(None, &["DATASETS.ROOT_DIR".into(), "datasets/fashion-mnist-reid".into()])?;
//! let trained = Learner::new(cfg)?            // validates the configuration
//!     .step(StepKind::Ctl)
//!     .seed(7)
//!     .fit::<Autodiff<Flex>>(&Default::default())?;
//! println!("{}", trained.report.test.table()); // mAP / CMC without and with centroids
//! let embeddings = trained.model.embed(burn::tensor::Tensor::zeros([1, 3, 256, 128], &Default::default()));
//! # anyhow::Ok(())
//! ```
//!
//! Nothing is written unless a run directory is asked for ([`Learner::run_dir`] or
//! [`Learner::default_run_dir`], the `reid train` layout with checkpoints and reports).

use std::path::PathBuf;

use anyhow::Result;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;

use crate::config::ReidConfig;
use crate::data::{ReidDataset, load_dataset};
use crate::model::ReidModel;
use crate::train::{FitOptions, RunSummary, StepKind, fit_model};

/// A validated training setup (see the module docs).
#[derive(Debug, Clone)]
pub struct Learner {
    cfg: ReidConfig,
    step: StepKind,
    seed: u64,
    options: FitOptions,
}

/// What [`Learner::fit`] returns.
pub struct Trained<B: AutodiffBackend> {
    /// The last-epoch model in eval mode (the one the report tests).
    pub model: ReidModel<B::InnerBackend>,
    /// Epochs, the end-of-training test with all three protocols, and where files went.
    pub report: RunSummary,
}

impl Learner {
    /// Validates `cfg`; the CTL step, the configuration's `REPRODUCIBLE_SEED` and no files by
    /// default.
    pub fn new(cfg: ReidConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            seed: cfg.reproducible_seed,
            cfg,
            step: StepKind::Ctl,
            options: FitOptions {
                in_memory: true,
                ..FitOptions::default()
            },
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ReidConfig {
        &self.cfg
    }

    /// The training step (`Ctl` = train_ctl_model.py, `Base` = train_base_model.py).
    pub fn step(mut self, step: StepKind) -> Self {
        self.step = step;
        self
    }

    /// The seed of every random stream of the run.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Writes the run (config, metrics, checkpoints, test report) to `dir`.
    pub fn run_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.options.in_memory = false;
        self.options.run_dir = Some(dir.into());
        self
    }

    /// Writes the run where `reid train` would (`<OUTPUT_DIR or logs/…>/train_*_model/version_N`).
    pub fn default_run_dir(mut self) -> Self {
        self.options.in_memory = false;
        self.options.run_dir = None;
        self
    }

    /// Progress bars on standard error.
    pub fn progress(mut self, on: bool) -> Self {
        self.options.progress = on;
        self
    }

    /// Further options (precision, data-parallel worker, centroid-B bug compatibility, ...);
    /// the run-directory choice made above is kept.
    pub fn options(mut self, options: FitOptions) -> Self {
        let (in_memory, run_dir) = (self.options.in_memory, self.options.run_dir.take());
        self.options = FitOptions {
            in_memory,
            run_dir,
            ..options
        };
        self
    }

    /// Loads the configured dataset and trains on it.
    pub fn fit<B: AutodiffBackend>(&self, device: &B::Device) -> Result<Trained<B>> {
        let dataset = load_dataset(&self.cfg)?;
        self.fit_on::<B>(&dataset, device)
    }

    /// Trains on an already loaded dataset.
    pub fn fit_on<B: AutodiffBackend>(
        &self,
        dataset: &ReidDataset,
        device: &B::Device,
    ) -> Result<Trained<B>> {
        let (report, model) = fit_model::<B>(
            &self.cfg,
            dataset,
            self.step,
            self.seed,
            &self.options,
            device,
        )?;
        Ok(Trained {
            model: model.valid(),
            report,
        })
    }
}
