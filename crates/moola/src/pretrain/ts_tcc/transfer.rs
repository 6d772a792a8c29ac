//! Moving a pre-trained TS-TCC encoder into the CNN-Transformer classifier, and the staged
//! freeze/unfreeze of fine-tuning, after the reference's
//! [`models/cnn_transformer.py`](https://github.com/HeinekenBottle/moola/blob/6ecdb28c78d6b91c94deabaf621c0c4ea4425e78/src/moola/models/cnn_transformer.py)
//! (`load_pretrained_encoder`, `freeze_encoder`, `unfreeze_encoder_gradual`).
//!
//! * The key mapping is the identity: `cnn_blocks.*`, `rel_pos_enc.*` and `transformer.*`
//!   (BatchNorm running statistics included, as they are part of a PyTorch state dict) are
//!   copied onto the classifier's fields of the same names; its head stays as initialised.
//! * `cnn_channels` and `cnn_kernels` must be equal (an error naming both, like the
//!   reference); unlike the reference, which skips tensors of another shape with a warning,
//!   any other difference (input features, transformer layers or heads) is an error too.
//! * Freezing sets `require_grad = false` on the encoder parameters, so they get no gradient
//!   and the optimiser leaves them alone (no weight decay either, as PyTorch's AdamW skips
//!   parameters without gradients). BatchNorm running statistics still update in training,
//!   as in PyTorch.
//! * Staged unfreezing at epochs 10 / 20 / 30: stage 1 opens the last transformer layer,
//!   stage 2 every transformer layer, stage 3 everything (CNN blocks, transformer,
//!   relative-position table). The learning rate is not changed.

use std::path::Path;

use anyhow::{Result, bail};
use burn::prelude::*;
use kiln::checkpoint::{param_shapes, set_trainable};

use super::artifact::load_encoder;
use super::model::{TsTccEncoder, block_input_dim, encoder_config};
use crate::model::CnnTransformer;
use crate::model::cnn_transformer::{CnnBlock, RelativePositionalEncoding};
use crate::nn::TransformerEncoder;

/// Epochs (0-based, at their start) of the reference's unfreeze stages 1, 2 and 3.
pub const UNFREEZE_EPOCHS: [usize; 3] = [10, 20, 30];

/// Copies a pre-trained encoder's `cnn_blocks`, `rel_pos_enc` and `transformer` into the
/// classifier (identity names) and, with `freeze`, freezes them.
///
/// Errors when the architectures differ: `cnn_channels` / `cnn_kernels` (the reference's
/// check, naming both values), input features, transformer layers or heads.
pub fn load_pretrained_encoder<B: Backend>(
    model: CnnTransformer<B>,
    encoder: &TsTccEncoder<B>,
    freeze: bool,
) -> Result<CnnTransformer<B>> {
    check_compatible(&model, encoder)?;
    let mut model = model;
    model.cnn_blocks = model
        .cnn_blocks
        .load_record(encoder.cnn_blocks.clone().into_record());
    model.rel_pos_enc = model
        .rel_pos_enc
        .load_record(encoder.rel_pos_enc.clone().into_record());
    model.transformer = model
        .transformer
        .load_record(encoder.transformer.clone().into_record());
    Ok(if freeze { freeze_encoder(model) } else { model })
}

/// [`load_pretrained_encoder`] from an encoder artefact written by
/// [`super::save_encoder`].
pub fn load_pretrained_encoder_file<B: Backend>(
    model: CnnTransformer<B>,
    path: &Path,
    freeze: bool,
) -> Result<CnnTransformer<B>> {
    let device = model.rel_pos_enc.rel_pos_emb.device();
    let (encoder, _) = load_encoder::<B>(path, &device)?;
    load_pretrained_encoder(model, &encoder, freeze)
        .map_err(|e| e.context(format!("cannot load the encoder {}", path.display())))
}

fn check_compatible<B: Backend>(
    model: &CnnTransformer<B>,
    encoder: &TsTccEncoder<B>,
) -> Result<()> {
    let ours = encoder_config(&model.cnn_blocks, &model.transformer);
    let theirs = encoder.config();
    if ours.cnn_channels != theirs.cnn_channels {
        bail!(
            "architecture mismatch: cnn_channels {:?} of the classifier != {:?} of the \
             pre-trained encoder",
            ours.cnn_channels,
            theirs.cnn_channels
        );
    }
    if ours.cnn_kernels != theirs.cnn_kernels {
        bail!(
            "architecture mismatch: cnn_kernels {:?} of the classifier != {:?} of the \
             pre-trained encoder",
            ours.cnn_kernels,
            theirs.cnn_kernels
        );
    }
    let (a, b) = (block_input_dim(&model.cnn_blocks), encoder.input_dim());
    if a != b {
        bail!(
            "architecture mismatch: the classifier takes {a} input features, the pre-trained \
             encoder {b}"
        );
    }
    if (ours.transformer_layers, ours.transformer_heads)
        != (theirs.transformer_layers, theirs.transformer_heads)
    {
        bail!(
            "architecture mismatch: the classifier has {} transformer layers × {} heads, the \
             pre-trained encoder {} × {}",
            ours.transformer_layers,
            ours.transformer_heads,
            theirs.transformer_layers,
            theirs.transformer_heads
        );
    }
    let mine = layer_shapes(&model.cnn_blocks, &model.rel_pos_enc, &model.transformer);
    let other = layer_shapes(
        &encoder.cnn_blocks,
        &encoder.rel_pos_enc,
        &encoder.transformer,
    );
    if mine != other {
        let first = mine
            .iter()
            .zip(&other)
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!(": `{}` {:?} vs `{}` {:?}", a.0, a.1, b.0, b.1))
            .unwrap_or_default();
        bail!("architecture mismatch between the classifier and the pre-trained encoder{first}");
    }
    Ok(())
}

/// Parameter paths and shapes of a set of encoder layers.
fn layer_shapes<B: Backend>(
    cnn_blocks: &Vec<CnnBlock<B>>,
    rel_pos_enc: &RelativePositionalEncoding<B>,
    transformer: &TransformerEncoder<B>,
) -> Vec<(String, Vec<usize>)> {
    let mut shapes = param_shapes::<B, _>(cnn_blocks);
    shapes.extend(param_shapes::<B, _>(rel_pos_enc));
    shapes.extend(param_shapes::<B, _>(transformer));
    shapes
}

/// Sets `require_grad` on the parameters of CNN blocks. BatchNorm's running statistics are left
/// alone: Burn maps them like parameters, and a running statistic that requires a gradient
/// would chain every step's update into the autodiff graph.
fn set_blocks_trainable<B: Backend>(blocks: Vec<CnnBlock<B>>, trainable: bool) -> Vec<CnnBlock<B>> {
    blocks
        .into_iter()
        .map(|mut block| {
            block.convs = set_trainable(block.convs, trainable);
            block.residual = set_trainable(block.residual, trainable);
            block.bn.weight = block.bn.weight.set_require_grad(trainable);
            block.bn.bias = block.bn.bias.set_require_grad(trainable);
            block
        })
        .collect()
}

/// Freezes the encoder part (`cnn_blocks`, `transformer`, `rel_pos_enc`): no gradients, no
/// updates. The head stays trainable.
pub fn freeze_encoder<B: Backend>(mut model: CnnTransformer<B>) -> CnnTransformer<B> {
    model.cnn_blocks = set_blocks_trainable(model.cnn_blocks, false);
    model.transformer = set_trainable(model.transformer, false);
    model.rel_pos_enc = set_trainable(model.rel_pos_enc, false);
    model
}

/// One stage of the reference's gradual unfreeze: 1 = the last transformer layer, 2 = every
/// transformer layer, 3 = everything (CNN blocks, transformer, relative-position table). Stages
/// only open parameters; nothing is frozen again. Other stages are an error.
pub fn unfreeze_encoder_gradual<B: Backend>(
    mut model: CnnTransformer<B>,
    stage: usize,
) -> Result<CnnTransformer<B>> {
    match stage {
        1 => {
            if let Some(last) = model.transformer.layers.pop() {
                model.transformer.layers.push(set_trainable(last, true));
            }
        }
        2 => model.transformer = set_trainable(model.transformer, true),
        3 => {
            model.cnn_blocks = set_blocks_trainable(model.cnn_blocks, true);
            model.transformer = set_trainable(model.transformer, true);
            model.rel_pos_enc = set_trainable(model.rel_pos_enc, true);
        }
        _ => bail!("invalid unfreeze stage {stage}: must be 1, 2 or 3"),
    }
    Ok(model)
}

/// The unfreeze stage reached by the start of `epoch` (0 = fully frozen), after
/// [`UNFREEZE_EPOCHS`].
pub fn unfreeze_stage_at(epoch: usize) -> usize {
    UNFREEZE_EPOCHS.iter().filter(|&&e| epoch >= e).count()
}

/// Sets the encoder's trainable state for the start of `epoch` of a fine-tuning run with a
/// pre-trained, initially frozen encoder: frozen, then every stage up to
/// [`unfreeze_stage_at`]`(epoch)` opened. Meant for `Task::on_epoch_start`; it depends on the
/// epoch only, so a resumed run gets the same state as an uninterrupted one (the reference
/// applies each stage once, at exactly its epoch, which is the same thing as the stages are
/// cumulative).
pub fn apply_unfreeze_schedule<B: Backend>(
    model: CnnTransformer<B>,
    epoch: usize,
) -> CnnTransformer<B> {
    let mut model = freeze_encoder(model);
    for stage in 1..=unfreeze_stage_at(epoch) {
        model = unfreeze_encoder_gradual(model, stage).expect("stages 1..=3 are valid");
    }
    model
}
