//! The centroids-reid model (the reference's [`modelling/bases.py`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/modelling/bases.py) and
//! [`modelling/baseline.py`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/modelling/baseline.py)): a ResNet backbone, global average pooling, a
//! BatchNorm1d "BNNeck" with frozen zero bias, a bias-free identity classifier, and the center-loss
//! centers, with the reference's module names, so that the Lightning checkpoint's keys
//! (`backbone.base.*`, `bn.*`, `fc_query.weight`, `center_loss.centers`) are the Burn paths.
//!
//! Feature routing (as in the reference): the **pre-BN** pooled feature
//! ([`ReidModel::forward_features`]) feeds the triplet, centroid-triplet and center losses; the **post-BN** feature
//! ([`ReidModel::bnneck`]) feeds the classifier and every retrieval embedding
//! ([`ReidModel::embed`]).
//!
//! Training vs evaluation follows Burn: on an autodiff backend the BatchNorms use (and update)
//! batch statistics; on the inner backend (`model.valid()`) they use the running statistics,
//! like PyTorch's `eval()`. The IBN instance norms use instance statistics in both.
//!
//! The BNNeck bias is created with `require_grad = false`: under autodiff it receives no
//! gradient, so Burn's optimisers (which step only parameters that have a gradient) never
//! update or weight-decay it, as the reference excludes it from Adam. See
//! [`ReidModel::frozen_params`].

pub mod import;
pub mod resnet;

use anyhow::{Context, Result, bail};
use burn::module::{Param, ParamId};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;
use kiln::nn::BatchNorm;
use serde::{Deserialize, Serialize};

pub use import::{
    CheckpointInfo, ImportSummary, ReaderKind, ReferenceHparams, load_imagenet_weights,
    load_reference_checkpoint, load_reference_checkpoint_into,
};
pub use resnet::{Arch, Block, BlockKind, FirstNorm, Ibn, ResNet, ResNetConfig};

/// What the model needs from the configuration (`MODEL.NAME`, `MODEL.LAST_STRIDE`,
/// `MODEL.BACKBONE_EMB_SIZE`, and the number of training identities).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReidModelConfig {
    /// Backbone name (`resnet18`, `resnet34`, `resnet50`, `resnet101`, `resnet152`,
    /// `resnet50_ibn_a`, `resnet101_ibn_a`).
    pub name: String,
    /// Stride of layer4 (1 in the reference configs).
    pub last_stride: usize,
    /// Pooled feature size: 512 for resnet18/34, 2048 for the others.
    pub emb_size: usize,
    /// Number of training identities (classifier outputs and centers).
    pub num_classes: usize,
}

impl ReidModelConfig {
    /// A configuration from its four numbers.
    pub fn new(
        name: impl Into<String>,
        last_stride: usize,
        emb_size: usize,
        num_classes: usize,
    ) -> Self {
        Self {
            name: name.into(),
            last_stride,
            emb_size,
            num_classes,
        }
    }

    /// Checks the configuration and returns the backbone configuration it describes.
    pub fn backbone(&self) -> Result<ResNetConfig> {
        let arch = Arch::from_name(&self.name)?;
        let config = ResNetConfig::new(arch, self.last_stride);
        config.validate()?;
        if self.emb_size != config.feature_dim() {
            bail!(
                "MODEL.BACKBONE_EMB_SIZE is {} but {} produces {}-d features; set it to {}",
                self.emb_size,
                arch,
                config.feature_dim(),
                config.feature_dim()
            );
        }
        if self.num_classes == 0 {
            bail!("the model needs at least one training identity (num_classes is 0)");
        }
        Ok(config)
    }

    /// Builds and materialises the model with the reference's initialisation.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<ReidModel<B>> {
        let backbone = self.backbone()?;
        ReidModel::new(&backbone, self.num_classes, device)
    }
}

/// The reference's `Baseline` wrapper (`backbone` in the checkpoint): the ResNet as `base`.
#[derive(Module, Debug)]
pub struct Backbone<B: Backend> {
    /// The ResNet (`backbone.base.*`).
    pub base: ResNet<B>,
}

impl<B: Backend> Backbone<B> {
    /// Global average pooling of the layer4 map: `[N, C, H, W]` → `[N, C]` (`global_feat`).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        global_average_pool(self.base.forward(x))
    }
}

/// `AdaptiveAvgPool2d(1)` + flatten.
pub fn global_average_pool<B: Backend>(map: Tensor<B, 4>) -> Tensor<B, 2> {
    let [n, c, h, w] = map.dims();
    map.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
}

/// The center-loss module's parameters (`center_loss.centers`).
#[derive(Module, Debug)]
pub struct Centers<B: Backend> {
    /// One center per training identity, `[num_classes, emb]`, initialised N(0, 1).
    pub centers: Param<Tensor<B, 2>>,
}

/// Features of one forward pass, routed as the reference's training step uses them.
#[derive(Debug, Clone)]
pub struct ReidOutput<B: Backend> {
    /// Pre-BN pooled feature `[N, emb]` (triplet, CTL, center loss).
    pub global_feat: Tensor<B, 2>,
    /// Post-BNNeck feature `[N, emb]`.
    pub bn_feat: Tensor<B, 2>,
    /// Classifier logits `[N, num_classes]`.
    pub logits: Tensor<B, 2>,
}

/// The CTL / base model: backbone, BNNeck, classifier and centers (`modelling/bases.py`).
#[derive(Module, Debug)]
pub struct ReidModel<B: Backend> {
    /// `Baseline`: the ResNet under `base`.
    pub backbone: Backbone<B>,
    /// BNNeck: BatchNorm1d(emb), bias frozen at 0.
    pub bn: BatchNorm<B>,
    /// Identity classifier `Linear(emb, num_classes, bias=False)`, init N(0, 0.001).
    pub fc_query: Linear<B>,
    /// Center-loss centers.
    pub center_loss: Centers<B>,
}

impl<B: Backend> ReidModel<B> {
    /// Builds the model around a backbone configuration (any width; the embedding size is the
    /// backbone's feature size) and materialises every parameter.
    pub fn new(backbone: &ResNetConfig, num_classes: usize, device: &B::Device) -> Result<Self> {
        if num_classes == 0 {
            bail!("the model needs at least one training identity (num_classes is 0)");
        }
        let base = backbone
            .init(device)
            .with_context(|| format!("cannot build the {} backbone", backbone.arch))?;
        let emb = backbone.feature_dim();
        let mut bn = BatchNorm::new(emb, device);
        bn.bias = bn.bias.set_require_grad(false);
        let fc_query = LinearConfig::new(emb, num_classes)
            .with_bias(false)
            .with_initializer(Initializer::Normal {
                mean: 0.0,
                std: 0.001,
            })
            .init(device);
        let centers = Initializer::Normal {
            mean: 0.0,
            std: 1.0,
        }
        .init([num_classes, emb], device);
        let model = Self {
            backbone: Backbone { base },
            bn,
            fc_query,
            center_loss: Centers { centers },
        };
        Ok(kiln::checkpoint::materialize(model))
    }

    /// Pre-BN pooled feature `global_feat`, `[N, emb]`.
    pub fn forward_features(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.backbone.forward(x)
    }

    /// BNNeck: `bn(global_feat)`.
    pub fn bnneck(&self, global_feat: Tensor<B, 2>) -> Tensor<B, 2> {
        self.bn.forward(global_feat)
    }

    /// Classifier logits from post-BN features.
    pub fn classify(&self, bn_feat: Tensor<B, 2>) -> Tensor<B, 2> {
        kiln::amp::linear_layer(&self.fc_query, bn_feat)
    }

    /// Retrieval embedding: post-BN, not normalised (as the reference's validation and inference
    /// compute it). Use on the inner backend
    /// (`model.valid()`) for the reference's eval-mode embeddings.
    pub fn embed(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.bnneck(self.forward_features(x))
    }

    /// Pre-BN feature, post-BN feature and logits of the whole batch.
    pub fn forward(&self, x: Tensor<B, 4>) -> ReidOutput<B> {
        let global_feat = self.forward_features(x);
        let bn_feat = self.bnneck(global_feat.clone());
        let logits = self.classify(bn_feat.clone());
        ReidOutput {
            global_feat,
            bn_feat,
            logits,
        }
    }

    /// Backbone architecture.
    pub fn arch(&self) -> Arch {
        self.backbone.base.arch
    }

    /// Embedding size (`MODEL.BACKBONE_EMB_SIZE`).
    pub fn emb_size(&self) -> usize {
        self.bn.num_features()
    }

    /// Number of training identities.
    pub fn num_classes(&self) -> usize {
        self.center_loss.centers.dims()[0]
    }

    /// Parameters the reference keeps out of every optimiser (`requires_grad = False`): the
    /// BNNeck bias. They get no gradient under autodiff; an optimiser built from explicit
    /// parameter lists must leave them out too.
    pub fn frozen_params(&self) -> Vec<ParamId> {
        vec![self.bn.bias.id]
    }

    /// Folds (or not) the backbone's BatchNorms into its convolutions for evaluation without
    /// autodiff (a different rounding, no faster; see [`ResNet::with_folded_batchnorm`]).
    pub fn with_folded_batchnorm(mut self, fold: bool) -> Self {
        self.backbone.base = self.backbone.base.with_folded_batchnorm(fold);
        self
    }

    /// Marks the BNNeck bias frozen again (e.g. after [`kiln::checkpoint::set_trainable`]).
    pub fn with_frozen_bnneck_bias(mut self) -> Self {
        self.bn.bias = self.bn.bias.set_require_grad(false);
        self
    }
}
