//! How a fit runs, shared by training ([`crate::train`]) and pre-training ([`crate::pretrain`]):
//! where it writes, what it resumes from, its data-parallel handle and extra callbacks.

use crate::data::WindowSet;

/// Where and how a fit writes files.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run directory for `metrics.csv` and checkpoints (none: in memory).
    pub run_dir: Option<std::path::PathBuf>,
    /// Resume from this checkpoint.
    pub resume_from: Option<std::path::PathBuf>,
    /// Show progress bars.
    pub progress: bool,
    /// This worker's handle in a data-parallel run (`None`: one device).
    pub dist: Option<kiln::dist::Dist>,
    /// Validation set for early stopping and checkpoint selection, instead of the recipe's
    /// `val_split` of the training data.
    pub validation: Option<WindowSet>,
    /// Callbacks run after the recipe's own (early stopping, checkpointing), one fresh instance
    /// per fit.
    pub callbacks: Vec<kiln::callbacks::CallbackFactory>,
    /// Train as this many data-parallel ranks would, on one device (0 or 1: an ordinary run;
    /// see `kiln::TrainerConfig::virtual_ranks`).
    pub virtual_ranks: usize,
    /// When a diverging run stops with an error.
    pub divergence: kiln::trainer::DivergenceCheck,
}
