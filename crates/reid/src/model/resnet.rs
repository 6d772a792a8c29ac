//! The ResNet backbones of centroids-reid (`modelling/backbones/resnet.py`, `resnet_ibn_a.py`).
//!
//! Field names mirror the reference's PyTorch state-dict keys, so that importing weights is a
//! key-for-key copy ([`super::import`]):
//!
//! | Burn path | PyTorch key |
//! |---|---|
//! | `conv1.weight`, `bn1.*` | the same |
//! | `layer{i}.{j}.conv{k}.weight`, `layer{i}.{j}.bn{2,3}.*` | the same |
//! | `layer{i}.{j}.bn1.Batch.*` (plain) | `layer{i}.{j}.bn1.*` |
//! | `layer{i}.{j}.bn1.Ibn.instance_norm.{gamma,beta}` | `layer{i}.{j}.bn1.IN.{weight,bias}` |
//! | `layer{i}.{j}.bn1.Ibn.batch_norm.*` | `layer{i}.{j}.bn1.BN.*` |
//! | `layer{i}.0.downsample.{0,1}.*` (a `(Conv2d, BatchNorm)` tuple) | the same |
//! | `fc.{weight,bias}` (IBN only; Burn stores the weight transposed) | the same |
//!
//! (`bn1.Batch` / `bn1.Ibn` are the variant names of the enum [`FirstNorm`]; the importer drops
//! enum variant segments, see [`super::import::torch_key`].)
//!
//! Architecture (the reference's [`resnet.py`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/modelling/backbones/resnet.py) and
//! [`resnet_ibn_a.py`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/modelling/backbones/resnet_ibn_a.py)): torchvision layout, stride on the 3×3 conv ("v1.5"),
//! bias-free convolutions, PyTorch-exact BatchNorm ([`kiln::nn::BatchNorm`]), max-pool 3×3/2
//! pad 1, and `last_stride` on layer4's first block.
//! * **Plain ResNet** (18/34 with BasicBlock, 50/101/152 with Bottleneck): **no ReLU after the
//!   stem BN** (commented out in the reference; its released weights were trained that way).
//!   Convolutions keep PyTorch's default init (kaiming-uniform, a = √5), since the reference
//!   never calls `random_init`.
//! * **ResNet-IBN-a** (50/101): stem ReLU; bn1 of every block in layers 1–3 is an [`Ibn`] layer;
//!   conv weights ~ N(0, √(2/(k·k·out))), norm weights 1 and biases 0; an unused
//!   `fc = Linear(2048, 1000)` that exists only so that the state dict matches.

use std::fmt;

use anyhow::{Result, bail};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    Initializer, InstanceNorm, InstanceNormConfig, Linear, LinearConfig, PaddingConfig2d,
};
use burn::prelude::*;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::ConvOptions;
use kiln::fused::relu;
use kiln::nn::BatchNorm;
use serde::{Deserialize, Serialize};

/// The backbones the reference wires in `modelling/baseline.py` (`MODEL.NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    /// `resnet18`: BasicBlock [2, 2, 2, 2], 512-d features.
    ResNet18,
    /// `resnet34`: BasicBlock [3, 4, 6, 3], 512-d features.
    ResNet34,
    /// `resnet50`: Bottleneck [3, 4, 6, 3], 2048-d features.
    ResNet50,
    /// `resnet101`: Bottleneck [3, 4, 23, 3].
    ResNet101,
    /// `resnet152`: Bottleneck [3, 8, 36, 3].
    ResNet152,
    /// `resnet50_ibn_a`: Bottleneck-IBN [3, 4, 6, 3].
    ResNet50IbnA,
    /// `resnet101_ibn_a`: Bottleneck-IBN [3, 4, 23, 3].
    ResNet101IbnA,
}

/// Residual block type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BlockKind {
    /// Two 3×3 convolutions (expansion 1).
    Basic,
    /// 1×1 → 3×3 (strided) → 1×1 (expansion 4).
    Bottleneck,
}

impl BlockKind {
    /// Output channels per `planes`.
    pub fn expansion(self) -> usize {
        match self {
            Self::Basic => 1,
            Self::Bottleneck => 4,
        }
    }
}

impl Arch {
    /// Every architecture, in the order the reference lists them.
    pub const ALL: [Arch; 7] = [
        Arch::ResNet18,
        Arch::ResNet34,
        Arch::ResNet50,
        Arch::ResNet101,
        Arch::ResNet152,
        Arch::ResNet50IbnA,
        Arch::ResNet101IbnA,
    ];

    /// Parses a reference `MODEL.NAME` (exact, lower case).
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| {
                let known: Vec<_> = Self::ALL.iter().map(|a| a.name()).collect();
                anyhow::anyhow!(
                    "unknown backbone MODEL.NAME `{name}`: expected one of {}",
                    known.join(", ")
                )
            })
    }

    /// The reference's `MODEL.NAME`.
    pub fn name(self) -> &'static str {
        match self {
            Self::ResNet18 => "resnet18",
            Self::ResNet34 => "resnet34",
            Self::ResNet50 => "resnet50",
            Self::ResNet101 => "resnet101",
            Self::ResNet152 => "resnet152",
            Self::ResNet50IbnA => "resnet50_ibn_a",
            Self::ResNet101IbnA => "resnet101_ibn_a",
        }
    }

    /// Blocks per stage (layer1..layer4).
    pub fn layers(self) -> [usize; 4] {
        match self {
            Self::ResNet18 => [2, 2, 2, 2],
            Self::ResNet34 | Self::ResNet50 | Self::ResNet50IbnA => [3, 4, 6, 3],
            Self::ResNet101 | Self::ResNet101IbnA => [3, 4, 23, 3],
            Self::ResNet152 => [3, 8, 36, 3],
        }
    }

    /// Residual block type.
    pub fn block(self) -> BlockKind {
        match self {
            Self::ResNet18 | Self::ResNet34 => BlockKind::Basic,
            _ => BlockKind::Bottleneck,
        }
    }

    /// Whether this is an IBN-a network (stem ReLU, IBN layers, unused `fc`).
    pub fn is_ibn(self) -> bool {
        matches!(self, Self::ResNet50IbnA | Self::ResNet101IbnA)
    }

    /// Dimension of the pooled feature (`MODEL.BACKBONE_EMB_SIZE`) at base width `width`
    /// (64 for the real networks: 512 for resnet18/34, 2048 otherwise).
    pub fn feature_dim(self, width: usize) -> usize {
        width * 8 * self.block().expansion()
    }

    /// The architecture with this structure, if the reference wires one.
    pub fn from_structure(layers: [usize; 4], block: BlockKind, ibn: bool) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.layers() == layers && a.block() == block && a.is_ibn() == ibn)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Builds a [`ResNet`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResNetConfig {
    /// Architecture.
    pub arch: Arch,
    /// Stride of layer4's first block (`MODEL.LAST_STRIDE`; 1 in every reference config).
    pub last_stride: usize,
    /// Base width (stem channels; the stages use width·{1,2,4,8} planes). 64 for the real
    /// networks; smaller values give the reduced models of the parity fixtures.
    pub width: usize,
    /// Outputs of the unused IBN `fc` (1000 ImageNet classes); ignored for plain ResNets.
    pub fc_classes: usize,
}

impl ResNetConfig {
    /// The reference network: width 64, 1000-way `fc` for IBN.
    pub fn new(arch: Arch, last_stride: usize) -> Self {
        Self {
            arch,
            last_stride,
            width: 64,
            fc_classes: 1000,
        }
    }

    /// Sets the base width (see [`ResNetConfig::width`]).
    pub fn with_width(mut self, width: usize) -> Self {
        self.width = width;
        self
    }

    /// Sets the IBN `fc` output size.
    pub fn with_fc_classes(mut self, fc_classes: usize) -> Self {
        self.fc_classes = fc_classes;
        self
    }

    /// Dimension of the pooled feature.
    pub fn feature_dim(&self) -> usize {
        self.arch.feature_dim(self.width)
    }

    /// Checks the numbers without building anything.
    pub fn validate(&self) -> Result<()> {
        if self.last_stride == 0 {
            bail!("MODEL.LAST_STRIDE must be at least 1, got 0");
        }
        let min_width = if self.arch.is_ibn() { 2 } else { 1 };
        if self.width < min_width {
            bail!(
                "{}: base width {} is too small (at least {min_width})",
                self.arch,
                self.width
            );
        }
        if self.arch.is_ibn() && self.fc_classes == 0 {
            bail!("{}: the IBN fc needs at least one output", self.arch);
        }
        Ok(())
    }

    /// Builds the network with the reference's initialisation (not yet materialised; see
    /// [`kiln::checkpoint::materialize`]).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<ResNet<B>> {
        self.validate()?;
        let ibn = self.arch.is_ibn();
        let block = self.arch.block();
        let w = self.width;
        let mut inplanes = w;
        let mut stages = Vec::with_capacity(4);
        for (stage, (&blocks, stride)) in self
            .arch
            .layers()
            .iter()
            .zip([1, 2, 2, self.last_stride])
            .enumerate()
        {
            let planes = w << stage;
            // IBN in layers 1–3 (the reference: `ibn = planes != 512`).
            let stage_ibn = ibn && stage < 3;
            let mut layer = Vec::with_capacity(blocks);
            for j in 0..blocks {
                let s = if j == 0 { stride } else { 1 };
                layer.push(self.block(block, inplanes, planes, s, stage_ibn, device));
                inplanes = planes * block.expansion();
            }
            stages.push(layer);
        }
        let [layer1, layer2, layer3, layer4] =
            <[Vec<Block<B>>; 4]>::try_from(stages).unwrap_or_else(|_| unreachable!("four stages"));
        let fc = ibn.then(|| LinearConfig::new(self.feature_dim(), self.fc_classes).init(device));
        Ok(ResNet {
            conv1: self.conv(3, w, 7, 2, device),
            bn1: BatchNorm::new(w, device),
            layer1,
            layer2,
            layer3,
            layer4,
            fc,
            arch: self.arch,
            stem_relu: ibn,
            fold_batchnorm: false,
        })
    }

    /// A bias-free convolution with padding k/2 and the architecture's initialiser.
    fn conv<B: Backend>(
        &self,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        device: &B::Device,
    ) -> Conv2d<B> {
        let p = k / 2;
        let mut config = Conv2dConfig::new([cin, cout], [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
            .with_bias(false);
        if self.arch.is_ibn() {
            // ResNet_IBN.__init__: normal(0, sqrt(2 / (k·k·out_channels))).
            config = config.with_initializer(Initializer::Normal {
                mean: 0.0,
                std: (2.0 / (k * k * cout) as f64).sqrt(),
            });
        }
        // Otherwise Burn's default conv init, KaimingUniform(gain 1/√3, fan_in), which is
        // PyTorch's default U(±1/√fan_in).
        config.init(device)
    }

    fn block<B: Backend>(
        &self,
        kind: BlockKind,
        inplanes: usize,
        planes: usize,
        stride: usize,
        ibn: bool,
        device: &B::Device,
    ) -> Block<B> {
        let out = planes * kind.expansion();
        let downsample = (stride != 1 || inplanes != out).then(|| {
            (
                self.conv(inplanes, out, 1, stride, device),
                BatchNorm::new(out, device),
            )
        });
        let bn1 = if ibn {
            FirstNorm::Ibn(Ibn::new(planes, device))
        } else {
            FirstNorm::Batch(BatchNorm::new(planes, device))
        };
        match kind {
            BlockKind::Basic => Block {
                conv1: self.conv(inplanes, planes, 3, stride, device),
                bn1,
                conv2: self.conv(planes, planes, 3, 1, device),
                bn2: BatchNorm::new(planes, device),
                conv3: None,
                bn3: None,
                downsample,
            },
            BlockKind::Bottleneck => Block {
                conv1: self.conv(inplanes, planes, 1, 1, device),
                bn1,
                conv2: self.conv(planes, planes, 3, stride, device),
                bn2: BatchNorm::new(planes, device),
                conv3: Some(self.conv(planes, out, 1, 1, device)),
                bn3: Some(BatchNorm::new(out, device)),
                downsample,
            },
        }
    }
}

/// `relu(bn(conv(x)) + residual)` (the residual and the ReLU each optional):
/// [`kiln::nn::conv2d_batch_norm`], which in evaluation runs the BatchNorm, the residual and the
/// ReLU inside the convolution's per-image pass with the roundings of the separate operations.
///
/// With `fold` and without autodiff (evaluation with running statistics) the BatchNorm is
/// instead folded into the convolution — weight·s and bias β − μ·s with s = γ/√(σ² + ε). Equal
/// to the exact result up to f32 rounding, in a different order from PyTorch's; hence opt-in
/// ([`ResNet::with_folded_batchnorm`]).
fn conv_bn<B: Backend>(
    conv: &Conv2d<B>,
    bn: &BatchNorm<B>,
    x: Tensor<B, 4>,
    fold: bool,
    (residual, act): (Option<Tensor<B, 4>>, bool),
) -> Tensor<B, 4> {
    let symmetric = match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            Some([top, left])
        }
        PaddingConfig2d::Valid => Some([0, 0]),
        _ => None,
    };
    let padding = match symmetric {
        Some(p)
            if fold
                && conv.bias.is_none()
                && !B::ad_enabled(&x.device())
                && kiln::amp::current().is_none() =>
        {
            p
        }
        _ => return kiln::nn::conv2d_batch_norm(conv, bn, x, residual, act),
    };
    let channels = bn.num_features();
    let scale = bn.weight.val() / bn.running_var.value().add_scalar(bn.epsilon).sqrt();
    let shift = bn.bias.val() - bn.running_mean.value() * scale.clone();
    let weight = kiln::ops::mul(conv.weight.val(), scale.reshape([channels, 1, 1, 1]));
    let options = ConvOptions::new(conv.stride, padding, conv.dilation, conv.groups);
    let y = kiln::amp::conv2d(x, weight, Some(shift), options);
    let y = match residual {
        Some(r) => y + r,
        None => y,
    };
    if act { relu(y) } else { y }
}

/// The IBN-a normalisation (`IBN` in `resnet_ibn_a.py`): InstanceNorm2d(half, affine) on the
/// first `half = floor(planes/2)` channels (instance statistics in training **and** evaluation),
/// BatchNorm2d on the remaining channels, concatenated.
#[derive(Module, Debug)]
pub struct Ibn<B: Backend> {
    /// `IN` in the reference (weight = `gamma`, bias = `beta`).
    pub instance_norm: InstanceNorm<B>,
    /// `BN` in the reference.
    pub batch_norm: BatchNorm<B>,
    /// Channels that go through the instance norm.
    pub half: usize,
}

impl<B: Backend> Ibn<B> {
    /// IBN over `planes` channels, PyTorch init (weights 1, biases 0, eps 1e-5).
    pub fn new(planes: usize, device: &B::Device) -> Self {
        let half = planes / 2;
        Self {
            instance_norm: InstanceNormConfig::new(half).with_affine(true).init(device),
            batch_norm: BatchNorm::new(planes - half, device),
            half,
        }
    }

    /// Normalises `[N, planes, H, W]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let channels = x.dims()[1];
        let first = self
            .instance_norm
            .forward(x.clone().narrow(1, 0, self.half));
        let rest = self
            .batch_norm
            .forward(x.narrow(1, self.half, channels - self.half));
        Tensor::cat(vec![first, rest], 1)
    }
}

/// The first normalisation of a block: BatchNorm2d, or IBN in layers 1–3 of IBN-a networks.
// One per block: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum FirstNorm<B: Backend> {
    /// BatchNorm2d (`bn1.*`).
    Batch(BatchNorm<B>),
    /// IBN (`bn1.IN.*`, `bn1.BN.*`).
    Ibn(Ibn<B>),
}

impl<B: Backend> FirstNorm<B> {
    /// Normalises `[N, C, H, W]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Self::Batch(bn) => bn.forward(x),
            Self::Ibn(ibn) => ibn.forward(x),
        }
    }
}

/// A residual block: BasicBlock (`conv3`/`bn3` absent) or Bottleneck / Bottleneck_IBN.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// 3×3 strided (basic) or 1×1 (bottleneck).
    pub conv1: Conv2d<B>,
    /// BatchNorm2d or IBN.
    pub bn1: FirstNorm<B>,
    /// 3×3 (strided in a bottleneck).
    pub conv2: Conv2d<B>,
    /// BatchNorm2d.
    pub bn2: BatchNorm<B>,
    /// 1×1 expansion (bottleneck only).
    pub conv3: Option<Conv2d<B>>,
    /// BatchNorm2d (bottleneck only).
    pub bn3: Option<BatchNorm<B>>,
    /// Projection shortcut `downsample.0` (1×1 strided conv) and `downsample.1` (BN), present
    /// when the stride is not 1 or the channel count changes.
    pub downsample: Option<(Conv2d<B>, BatchNorm<B>)>,
}

impl<B: Backend> Block<B> {
    /// `relu(residual(x) + shortcut(x))`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_with(x, false)
    }

    /// [`Block::forward`], with the BatchNorms folded into the convolutions in evaluation when
    /// `fold_batchnorm` (see [`ResNet::with_folded_batchnorm`]).
    pub fn forward_with(&self, x: Tensor<B, 4>, fold_batchnorm: bool) -> Tensor<B, 4> {
        let fold = fold_batchnorm;
        let shortcut = match &self.downsample {
            Some((conv, bn)) => conv_bn(conv, bn, x.clone(), fold, (None, false)),
            None => x.clone(),
        };
        let out = match &self.bn1 {
            FirstNorm::Batch(bn) => conv_bn(&self.conv1, bn, x, fold, (None, true)),
            FirstNorm::Ibn(ibn) => relu(ibn.forward(kiln::amp::conv2d_layer(&self.conv1, x))),
        };
        match (&self.conv3, &self.bn3) {
            (Some(conv3), Some(bn3)) => {
                let out = conv_bn(&self.conv2, &self.bn2, out, fold, (None, true));
                conv_bn(conv3, bn3, out, fold, (Some(shortcut), true))
            }
            _ => conv_bn(&self.conv2, &self.bn2, out, fold, (Some(shortcut), true)),
        }
    }
}

/// A reference ResNet / ResNet-IBN-a; `forward` returns the layer4 feature map.
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    /// 7×7/2 stem convolution.
    pub conv1: Conv2d<B>,
    /// Stem BatchNorm2d.
    pub bn1: BatchNorm<B>,
    /// Stage 1 (stride 1).
    pub layer1: Vec<Block<B>>,
    /// Stage 2 (stride 2).
    pub layer2: Vec<Block<B>>,
    /// Stage 3 (stride 2).
    pub layer3: Vec<Block<B>>,
    /// Stage 4 (stride `last_stride`).
    pub layer4: Vec<Block<B>>,
    /// The IBN network's unused ImageNet classifier (kept for state-dict compatibility).
    pub fc: Option<Linear<B>>,
    /// Architecture.
    pub arch: Arch,
    /// ReLU after the stem BN (IBN-a only; the plain reference ResNet has none).
    pub stem_relu: bool,
    /// Fold the BatchNorms into the convolutions in evaluation (off by default; see
    /// [`ResNet::with_folded_batchnorm`]).
    pub fold_batchnorm: bool,
}

impl<B: Backend> ResNet<B> {
    /// conv1 → bn1 (→ ReLU for IBN-a): the map that enters the max-pool, `[N, width, H/2, W/2]`.
    pub fn stem(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        conv_bn(
            &self.conv1,
            &self.bn1,
            x,
            self.fold_batchnorm,
            (None, self.stem_relu),
        )
    }

    /// The layer4 feature map: `[N, feature_dim, H/16, W/16]` with last stride 1
    /// (`[N, 2048, 16, 8]` for a 256×128 ResNet50 input).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = max_pool2d(self.stem(x), [3, 3], [2, 2], [1, 1], [1, 1], false);
        for block in self
            .layer1
            .iter()
            .chain(&self.layer2)
            .chain(&self.layer3)
            .chain(&self.layer4)
        {
            x = block.forward_with(x, self.fold_batchnorm);
        }
        x
    }

    /// Folds (or not) the BatchNorms into the convolutions when evaluating without autodiff.
    /// Training (autodiff) is unaffected. The folded weights are recomputed on every forward.
    /// Off by default: the unfolded evaluation already applies each BatchNorm (and the residual
    /// and ReLU after it) inside the convolution's per-image pass
    /// ([`kiln::nn::conv2d_batch_norm`]) with the exact roundings, and folding is no faster
    /// than that (ResNet50 on Flex, 2 cores, 64×3×256×128, alternating runs of
    /// `reid bench --no-torch --steps 1 --warmup 0 --embed-batches 4 [--fold-batchnorm]`:
    /// 28.5 / 29.7 img/s folded, 27.9 / 32.5 img/s not). Folded results equal the exact ones up
    /// to f32 rounding (parity fixtures: within 1.3e-4 of the float64 reference instead of
    /// 4e-5).
    pub fn with_folded_batchnorm(mut self, fold: bool) -> Self {
        self.fold_batchnorm = fold;
        self
    }

    /// Channels of the layer4 map (the pooled feature dimension).
    pub fn feature_dim(&self) -> usize {
        let last = self.layer4.last().expect("layer4 has at least one block");
        match &last.bn3 {
            Some(bn3) => bn3.num_features(),
            None => last.bn2.num_features(),
        }
    }

    /// Base width (stem channels).
    pub fn width(&self) -> usize {
        self.bn1.num_features()
    }

    /// Stride of layer4 (`MODEL.LAST_STRIDE`), read from its first block's strided conv.
    pub fn last_stride(&self) -> usize {
        let first = self.layer4.first().expect("layer4 has at least one block");
        let strided = if first.conv3.is_some() {
            &first.conv2
        } else {
            &first.conv1
        };
        strided.stride[0]
    }
}
