//! One convention for every file that holds a model: a **card** and the **weights**.
//!
//! The card is a small serde value that says how to build the module (architecture, sizes,
//! class labels, where it came from); the weights are a Burn record of exactly that module.
//! Loading always builds the module from the card first and then loads the weights with the
//! shape check of [`checkpoint::load_checked`](crate::train::checkpoint::load_checked), so a file of
//! another architecture is an error naming the parameter, never a silent mis-load.
//!
//! Two containers carry the pair:
//!
//! * a **model file**: `<stem>.mpk` (weights, Burn named MessagePack) next to `<stem>.json` (the
//!   card), both written atomically; `<stem>`, `<stem>.mpk` and `<stem>.json` all name it;
//! * a **training checkpoint** (`*.ckpt`, [`checkpoint`](crate::train::checkpoint)): the card is the
//!   task state the trainer stored in its header (`meta.task`, written by
//!   [`Task::state`](crate::train::trainer::Task::state)) and the weights are its `model` section, so
//!   a checkpoint loads wherever a model file does.
//!
//! ```no_run
//! # use kiln::backend::Flex;
//! # use burn::nn::{Linear, LinearConfig};
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Card { d_in: usize, d_out: usize }
//!
//! # let device = Default::default();
//! let card = Card { d_in: 4, d_out: 2 };
//! let model: Linear<Flex> = LinearConfig::new(card.d_in, card.d_out).init(&device);
//! kiln::artifact::save(&model, &card, "out/head".as_ref())?;
//! let (loaded, card, _source) = kiln::artifact::load::<Flex, Linear<Flex>, Card>(
//!     "out/head".as_ref(),
//!     &device,
//!     |c: &Card| Ok(LinearConfig::new(c.d_in, c.d_out).init(&device)),
//! )?;
//! # anyhow::Ok(())
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::backend::Backend;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::train::checkpoint;

/// Which container a model was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A `<stem>.mpk` + `<stem>.json` model file.
    ModelFile {
        /// The weights file.
        weights: PathBuf,
    },
    /// A training checkpoint.
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// Epochs completed when it was written.
        epochs_completed: usize,
    },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::ModelFile { weights } => write!(f, "{}", weights.display()),
            Source::Checkpoint {
                path,
                epochs_completed,
            } => write!(
                f,
                "{} (checkpoint after {epochs_completed} epochs)",
                path.display()
            ),
        }
    }
}

/// The weights and card paths of the model file `path` (`<stem>`, `<stem>.mpk` or
/// `<stem>.json`).
pub fn paths(path: &Path) -> (PathBuf, PathBuf) {
    let stem = if path.extension().is_some_and(|e| e == "mpk" || e == "json") {
        path.with_extension("")
    } else {
        path.to_path_buf()
    };
    let mut weights = stem.clone().into_os_string();
    weights.push(".mpk");
    let mut card = stem.into_os_string();
    card.push(".json");
    (weights.into(), card.into())
}

/// True when `path` is a plain file that is neither half of a model file pair nor a training
/// checkpoint (e.g. a PyTorch file to import instead).
pub fn is_foreign_file(path: &Path) -> Result<bool> {
    Ok(path.is_file() && !paths(path).1.is_file() && !checkpoint::is_checkpoint(path)?)
}

/// Writes a model file: the weights, then the card (each atomically; the card last, so a card
/// never names weights that are not there yet).
pub fn save<B: Backend, M: Module<B>, C: Serialize>(
    module: &M,
    card: &C,
    path: &Path,
) -> Result<()> {
    let (weights, card_path) = paths(path);
    checkpoint::save_module(module, &weights)?;
    crate::files::io::write_json(&card_path, card)
}

/// Reads the card of a model file or checkpoint without loading the weights.
pub fn read_card<C: DeserializeOwned>(path: &Path) -> Result<(C, Source)> {
    if path.is_file() && checkpoint::is_checkpoint(path)? {
        let (meta, _) = checkpoint::read_checkpoint(path)?;
        let card = card_of_checkpoint(path, meta.task)?;
        let source = Source::Checkpoint {
            path: path.to_path_buf(),
            epochs_completed: meta.epochs_completed,
        };
        return Ok((card, source));
    }
    let (weights, card_path) = paths(path);
    if !card_path.is_file() {
        bail!(
            "{}: no model here: expected a training checkpoint or the model file pair {} + {}",
            path.display(),
            weights.display(),
            card_path.display()
        );
    }
    let card = crate::files::io::read_json(&card_path)
        .with_context(|| format!("cannot read the model card {}", card_path.display()))?;
    Ok((card, Source::ModelFile { weights }))
}

/// Loads a model file or checkpoint: reads the card, builds the module with `build`, then loads
/// the weights into it (shapes checked). `build`'s errors are returned as they are, so they
/// should name the file.
pub fn load<B: Backend, M: Module<B>, C: DeserializeOwned>(
    path: &Path,
    device: &B::Device,
    build: impl FnOnce(&C) -> Result<M>,
) -> Result<(M, C, Source)> {
    if path.is_file() && checkpoint::is_checkpoint(path)? {
        let (meta, sections) = checkpoint::read_checkpoint(path)?;
        let card: C = card_of_checkpoint(path, meta.task)?;
        let module = build(&card)?;
        let bytes = sections
            .get("model")
            .cloned()
            .with_context(|| format!("{} has no `model` section", path.display()))?;
        let record = checkpoint::record_from_bytes::<B, M::Record>(bytes, device)
            .with_context(|| format!("{} does not hold this model's weights", path.display()))?;
        let module = checkpoint::load_checked(module, record, &path.display().to_string())?;
        let source = Source::Checkpoint {
            path: path.to_path_buf(),
            epochs_completed: meta.epochs_completed,
        };
        return Ok((module, card, source));
    }
    let (card, source) = read_card::<C>(path)?;
    let Source::ModelFile { weights } = &source else {
        unreachable!("read_card returns a model file for non-checkpoints");
    };
    let module = build(&card)?;
    let module = checkpoint::load_module(module, weights, device)?;
    Ok((module, card, source))
}

fn card_of_checkpoint<C: DeserializeOwned>(path: &Path, task: serde_json::Value) -> Result<C> {
    if task.is_null() {
        bail!(
            "{} is a checkpoint without a model card (its task stores no state)",
            path.display()
        );
    }
    serde_json::from_value(task).with_context(|| {
        format!(
            "{}: the checkpoint's task state is not a card of this kind of model",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Flex;
    use burn::nn::{Linear, LinearConfig};
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Card {
        d_in: usize,
        d_out: usize,
    }

    fn build(c: &Card) -> Result<Linear<Flex>> {
        Ok(LinearConfig::new(c.d_in, c.d_out).init(&Default::default()))
    }

    fn weights(m: &Linear<Flex>) -> Vec<f32> {
        m.weight.val().into_data().to_vec().unwrap()
    }

    #[test]
    fn model_file_and_checkpoint_load_the_same_way() {
        let dir = tempfile::tempdir().unwrap();
        let device = Default::default();
        let card = Card { d_in: 3, d_out: 2 };
        // Burn initialises parameters lazily: materialise them once, or every clone would draw
        // its own values.
        let model = checkpoint::materialize(build(&card).unwrap());

        // Model file: any of the three names works.
        save(&model, &card, &dir.path().join("m.json")).unwrap();
        for name in ["m", "m.mpk", "m.json"] {
            let (loaded, c, source) =
                load::<Flex, _, Card>(&dir.path().join(name), &device, build).unwrap();
            assert_eq!(c, card);
            assert_eq!(weights(&loaded), weights(&model));
            assert!(matches!(source, Source::ModelFile { .. }));
        }

        // Checkpoint: the card is the task state, the weights the `model` section.
        let ckpt = dir.path().join("last.ckpt");
        let meta = checkpoint::CheckpointMeta {
            epochs_completed: 4,
            global_step: 8,
            seed: 1,
            metrics: Default::default(),
            callbacks: Default::default(),
            task: serde_json::to_value(&card).unwrap(),
            sections: vec![],
        };
        let bytes = checkpoint::record_to_bytes::<Flex, _>(model.clone().into_record()).unwrap();
        checkpoint::write_checkpoint(&ckpt, meta, vec![("model", bytes)]).unwrap();
        let (loaded, c, source) = load::<Flex, _, Card>(&ckpt, &device, build).unwrap();
        assert_eq!(c, card);
        assert_eq!(weights(&loaded), weights(&model));
        assert!(source.to_string().contains("after 4 epochs"), "{source}");

        // A card that builds another architecture is an error naming the parameter.
        crate::files::io::write_json(dir.path().join("m.json"), &Card { d_in: 5, d_out: 2 })
            .unwrap();
        let err = load::<Flex, _, Card>(&dir.path().join("m"), &device, build).unwrap_err();
        assert!(format!("{err:#}").contains("weight"), "{err:#}");

        // Nothing there: the error names both expected files.
        let err = load::<Flex, _, Card>(&dir.path().join("none"), &device, build).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("none.mpk") && msg.contains("none.json"),
            "{msg}"
        );
    }
}
