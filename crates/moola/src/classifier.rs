//! The public classifier API: `fit`, `predict`, `predict_proba`, `predict_with_pointers`,
//! `save`, `load` (the API the reference's deep classifiers share).
//!
//! ```no_run
//! use kiln::backend::{Autodiff, Flex};
//! use moola::{Classifier, data};
//!
//! let train = data::read_any("datasets/BasicMotions/BasicMotions_TRAIN.ts".as_ref())?;
//! let test = data::read_any("datasets/BasicMotions/BasicMotions_TEST.ts".as_ref())?;
//! // The reference architecture and recipe of a model, by name (or `Classifier::new(spec,
//! // recipe, device)` for your own).
//! let mut clf = Classifier::<Autodiff<Flex>>::for_model("simple_lstm", Default::default())?;
//! clf.fit(&train)?;
//! let labels = clf.predict(&test)?;
//! let proba = clf.predict_proba(&test)?; // rows sum to 1, columns in sorted-label order
//! clf.save("model".as_ref())?;
//! # anyhow::Ok(())
//! ```
//!
//! The network is built lazily by `fit` from the data (features per step, classes, sequence
//! length); every `fit` starts from a fresh network, like the reference. Inference runs in eval
//! mode (dropout off, BatchNorm running statistics) on the inner backend.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;

use crate::data::{LabelMap, WindowSet};
use crate::model::{self, InnerWindow, ModelCard, ModelSpec, Net};
use crate::train::{self, RunOptions, TrainConfig};

/// Inference batch size (outputs do not depend on it in eval mode).
const INFER_BATCH: usize = 1024;

/// A trained (or loaded) network and what is needed to use it.
struct TrainedNet<B: AutodiffBackend> {
    net: Net<B::InnerBackend>,
    card: ModelCard,
}

/// Summary of a `fit`.
#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    /// Epochs run.
    pub epochs: usize,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// Best validation loss, when validation ran.
    pub best_val_loss: Option<f64>,
    /// Final training accuracy (on augmented batches).
    pub final_train_acc: Option<f64>,
    /// Number of parameters.
    pub num_params: usize,
    /// How the fit trained: the small-data rule resolved (batch, epochs, steps per epoch,
    /// schedule).
    pub plan: train::Plan,
    /// The input scaling (recorded in the model card; `auto` resolved on the training set).
    pub scaling: crate::scaling::InputScaling,
}

/// Start/end pointer predictions of the CNN-Transformer (reference `predict_with_pointers`).
#[derive(Debug, Clone, Serialize)]
pub struct PointerPredictions {
    /// Predicted labels.
    pub labels: Vec<String>,
    /// Class probabilities.
    pub probabilities: Vec<Vec<f64>>,
    /// Sigmoid start probabilities over the inner window.
    pub start_probabilities: Vec<Vec<f64>>,
    /// Sigmoid end probabilities over the inner window.
    pub end_probabilities: Vec<Vec<f64>>,
    /// Argmax start, relative to the inner-window start (0-based).
    pub start_predictions: Vec<usize>,
    /// Argmax end, relative to the inner-window start.
    pub end_predictions: Vec<usize>,
    /// The inner window (absolute bar = window.start + relative index).
    pub window: InnerWindow,
}

/// A moola classifier on backend `B` (trained with autodiff, used on `B::InnerBackend`).
pub struct Classifier<B: AutodiffBackend> {
    spec: ModelSpec,
    config: TrainConfig,
    device: B::Device,
    run: RunOptions,
    fitted: Option<TrainedNet<B>>,
}

impl<B: AutodiffBackend> Classifier<B> {
    /// An unfitted classifier.
    pub fn new(spec: ModelSpec, config: TrainConfig, device: B::Device) -> Self {
        Self {
            spec,
            config,
            device,
            run: RunOptions::default(),
            fitted: None,
        }
    }

    /// The reference architecture and training recipe of the model `name` (`simple_lstm`,
    /// `cnn_transformer` or `rwkv_ts`): the name is given once.
    pub fn for_model(name: &str, device: B::Device) -> Result<Self> {
        Ok(Self::new(
            ModelSpec::from_name(name)?,
            TrainConfig::for_model(name),
            device,
        ))
    }

    /// The seed of every random stream of `fit` (initialisation, splits, shuffling,
    /// augmentation); the reference's is 1337.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.config.seed = seed;
        self
    }

    /// Adds a callback to every later `fit` (after the recipe's early stopping and
    /// checkpointing): `make` builds a fresh one per fit. It sees each epoch's metrics and may
    /// stop training or ask for checkpoints through [`kiln::callbacks::Actions`].
    pub fn with_callback<C: kiln::callbacks::Callback + 'static>(
        mut self,
        make: impl Fn() -> C + Send + Sync + 'static,
    ) -> Self {
        self.run
            .callbacks
            .push(kiln::callbacks::CallbackFactory::new(make));
        self
    }

    /// Trains on `train` and early-stops / selects on `validation` (instead of the recipe's
    /// `val_split` of the training data).
    pub fn fit_with_validation(
        &mut self,
        train: &WindowSet,
        validation: &WindowSet,
    ) -> Result<FitReport> {
        let previous = self.run.validation.replace(validation.clone());
        let report = self.fit(train);
        self.run.validation = previous;
        report
    }

    /// Writes run files (metrics log, checkpoints) to `run` during `fit`.
    /// Callbacks added with [`with_callback`](Self::with_callback) are kept.
    pub fn with_run_options(mut self, run: RunOptions) -> Self {
        let added = std::mem::take(&mut self.run.callbacks);
        self.run = run;
        self.run.callbacks.splice(0..0, added);
        self
    }

    /// The model spec.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The training configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The model card of a fitted or loaded classifier.
    pub fn card(&self) -> Option<&ModelCard> {
        self.fitted.as_ref().map(|f| &f.card)
    }

    /// The eval-mode network of a fitted or loaded classifier.
    pub fn net(&self) -> Option<&Net<B::InnerBackend>> {
        self.fitted.as_ref().map(|f| &f.net)
    }

    /// Trains a fresh network on a labelled set (rebuilding it, like the reference).
    pub fn fit(&mut self, data: &WindowSet) -> Result<FitReport> {
        let fitted = train::fit::<B>(&self.spec, &self.config, data, &self.device, &self.run)?;
        let best_val_loss = fitted
            .history
            .iter()
            .filter_map(|(_, r)| r.get("val_loss").copied())
            .fold(None, |acc: Option<f64>, v| {
                Some(acc.map_or(v, |a| a.min(v)))
            });
        let final_train_acc = fitted
            .history
            .last()
            .and_then(|(_, r)| r.get("train_acc").copied());
        let net = fitted.net.valid();
        let report = FitReport {
            epochs: fitted.epochs,
            stopped_early: fitted.stopped_early,
            best_val_loss,
            final_train_acc,
            num_params: kiln::checkpoint::parameter_count(&net),
            plan: fitted.plan,
            scaling: fitted.scaling,
        };
        let card = ModelCard::new(
            &self.spec,
            data.n_features,
            data.seq_len,
            fitted.prepared.labels.classes().to_vec(),
        )
        .with_scaling(fitted.scaling);
        self.fitted = Some(TrainedNet { net, card });
        Ok(report)
    }

    fn fitted(&self) -> Result<&TrainedNet<B>> {
        self.fitted
            .as_ref()
            .context("the classifier is not fitted: call fit() or load() first")
    }

    fn check_shape(&self, data: &WindowSet) -> Result<()> {
        let card = &self.fitted()?.card;
        if data.n_features != card.input_dim {
            bail!(
                "the model expects {} features per step, the data has {}",
                card.input_dim,
                data.n_features
            );
        }
        if data.seq_len != card.seq_len {
            bail!(
                "the model was built for sequences of {} steps, the data has {}",
                card.seq_len,
                data.seq_len
            );
        }
        Ok(())
    }

    /// The network's outputs on `data` after the card's input scaling.
    fn infer(&self, data: &WindowSet) -> Result<train::HostOutputs> {
        self.check_shape(data)?;
        let fitted = self.fitted()?;
        data.check_finite()?;
        let scaled = fitted.card.scaling.apply(data)?;
        train::infer(&fitted.net, &scaled, INFER_BATCH, &self.device)
    }

    /// Class probabilities `[n, classes]` (softmax), columns in label-index (sorted) order.
    /// The windows go through the input scaling the model was trained with (its card's).
    pub fn predict_proba(&self, data: &WindowSet) -> Result<Vec<Vec<f64>>> {
        let (logits, _) = self.infer(data)?;
        Ok(logits.iter().map(|r| train::softmax(r)).collect())
    }

    /// Predicted labels (argmax of the probabilities).
    pub fn predict(&self, data: &WindowSet) -> Result<Vec<String>> {
        let classes = &self.fitted()?.card.classes;
        Ok(self
            .predict_proba(data)?
            .iter()
            .map(|p| classes[kiln::metrics::argmax(p)].clone())
            .collect())
    }

    /// Labels, probabilities and start/end pointers (CNN-Transformer trained with pointers).
    pub fn predict_with_pointers(&self, data: &WindowSet) -> Result<PointerPredictions> {
        let fitted = self.fitted()?;
        let window = match &fitted.card.spec {
            ModelSpec::CnnTransformer(c) if c.predict_pointers => c
                .window
                .or(InnerWindow::default_for(fitted.card.seq_len))
                .context("pointer model without an inner window")?,
            _ => bail!("this model was not trained with pointer heads"),
        };
        let (logits, pointers) = self.infer(data)?;
        let (starts, ends) = pointers.context("the network returned no pointer outputs")?;
        let sigmoid = |r: &Vec<f32>| -> Vec<f64> {
            r.iter()
                .map(|&v| 1.0 / (1.0 + (-f64::from(v)).exp()))
                .collect()
        };
        let probabilities: Vec<Vec<f64>> = logits.iter().map(|r| train::softmax(r)).collect();
        let start_probabilities: Vec<Vec<f64>> = starts.iter().map(sigmoid).collect();
        let end_probabilities: Vec<Vec<f64>> = ends.iter().map(sigmoid).collect();
        Ok(PointerPredictions {
            labels: probabilities
                .iter()
                .map(|p| fitted.card.classes[kiln::metrics::argmax(p)].clone())
                .collect(),
            start_predictions: start_probabilities
                .iter()
                .map(|p| kiln::metrics::argmax(p))
                .collect(),
            end_predictions: end_probabilities
                .iter()
                .map(|p| kiln::metrics::argmax(p))
                .collect(),
            probabilities,
            start_probabilities,
            end_probabilities,
            window,
        })
    }

    /// The label map of a fitted classifier.
    pub fn labels(&self) -> Result<LabelMap> {
        LabelMap::from_classes(self.fitted()?.card.classes.clone())
    }

    /// Saves weights (`<path>.mpk`, Burn record) and the JSON sidecar (`<path>.json`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let fitted = self.fitted()?;
        model::save(&fitted.net, &fitted.card, path)
    }

    /// Loads a classifier saved by [`Classifier::save`] or produced by `moola import`.
    pub fn load(path: &Path, config: TrainConfig, device: B::Device) -> Result<Self> {
        let (net, card) = model::load::<B::InnerBackend>(path, &device)?;
        Ok(Self {
            spec: card.spec.clone(),
            config,
            device,
            run: RunOptions::default(),
            fitted: Some(TrainedNet { net, card }),
        })
    }

    /// Wraps an already built eval network and its card (e.g. from an import).
    pub fn from_parts(net: Net<B::InnerBackend>, card: ModelCard, device: B::Device) -> Self {
        Self {
            spec: card.spec.clone(),
            config: TrainConfig::for_model(card.spec.name()),
            device,
            run: RunOptions::default(),
            fitted: Some(TrainedNet { net, card }),
        }
    }
}
