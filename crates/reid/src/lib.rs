//! # reid: person re-identification and fashion retrieval with centroids, on Burn
//!
//! A Rust re-implementation of mikwieczorek/centroids-reid ("On the Unreasonable Effectiveness
//! of Centroids in Image Retrieval").
//!
//! The library in one screen:
//!
//! * [`ReidConfig`]: the yacs configuration (every reference key and default; YAML files and
//!   `KEY VALUE` overrides);
//! * [`Learner`]: validated configuration in, [`Trained`] (eval-mode [`ReidModel`] + the
//!   [`RunSummary`] with the end-of-training test) out;
//! * [`ReidModel`]: ResNet / ResNet-IBN-a + BNNeck; [`ReidModelConfig`] builds one; reference
//!   checkpoints load through [`infer::load_model`];
//! * [`EvalReport`]: mAP / CMC without centroids and with centroid modes A and B;
//! * [`load_dataset`] / [`ReidDataset`]: Market1501, DukeMTMC-reID and COCO-style retrieval sets;
//! * [`ImageEmbedder`] + [`SavedGallery`]: embed any image files and search a saved gallery
//!   (exact or through its HNSW index, [`search`]).
//!
//! Modules, from data to command line: [`data`], [`model`], [`loss`], [`eval`], [`train`]
//! (the kiln task and its optimisation), [`learner`], [`infer`] and [`tools`] (embedding and
//! similarity search), [`search`] (gallery-scale retrieval), [`bench`], and [`cli`] on top, which nothing below imports.

pub mod bench;
pub mod cli;
pub mod config;
pub mod data;
pub mod eval;
pub mod infer;
pub mod learner;
pub mod loss;
pub mod model;
pub mod search;
pub mod tools;
pub mod train;

pub use config::ReidConfig;
pub use data::{ReidDataset, load_dataset};
pub use eval::EvalReport;
pub use learner::{Learner, Trained};
pub use model::{ReidModel, ReidModelConfig};
pub use search::{ImageEmbedder, SavedGallery, SearchMetric, SearchMode};
pub use train::{FitOptions, RunSummary, StepKind};
