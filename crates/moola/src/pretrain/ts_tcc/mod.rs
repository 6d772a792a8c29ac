//! TS-TCC contrastive pre-training of the CNN-Transformer's encoder, ported from the
//! reference's
//! [`models/ts_tcc.py`](https://github.com/HeinekenBottle/moola/blob/6ecdb28c78d6b91c94deabaf621c0c4ea4425e78/src/moola/models/ts_tcc.py)
//! (commit `6ecdb28`).
//!
//! ```text
//! windows → two augmented views (jitter, scaling, time warp; one coin per op per batch)
//!   each: TsTccEncoder = cnn_blocks → + mean relative-position bias → transformer  [B, T, d]
//!         → mean over T → ProjectionHead: Linear(d→128) → LayerNorm → ReLU → Linear(128→64)
//!   → info_nce_loss(z1, z2, τ = 0.5)  (NT-Xent; the original TS-TCC's temporal/contextual
//!     contrasting modules are not part of the reference either)
//! ```
//!
//! * [`TsTccEncoder`] has the CNN-Transformer's `cnn_blocks`, `rel_pos_enc` and `transformer`
//!   under the same names (built by the same code), without window weighting or attention
//!   mask, so its weights map one-to-one onto the classifier ([`load_pretrained_encoder`]).
//! * [`pretrain`] runs the reference's `TSTCCPretrainer.pretrain` on kiln's trainer and returns
//!   the `{train_loss, val_loss, best_epoch}` history (also written to the run directory).
//! * [`save_encoder`] / [`load_encoder`]: the encoder artefact (Burn record + JSON card).
//! * Fine-tuning: [`load_pretrained_encoder`], [`freeze_encoder`],
//!   [`unfreeze_encoder_gradual`] and [`apply_unfreeze_schedule`] (stages at epochs 10/20/30).
//!
//! Reference names for a PyTorch import: encoder keys are the identity; the projection head's
//! `projection_head.projection.{n}.*` are `projection_head.projection_{n}.*`.

mod artifact;
mod loss;
mod model;
mod pretrainer;
mod transfer;

pub use artifact::{
    ENCODER_CARD_FORMAT, EncoderCard, load_encoder, save_encoder, save_encoder_with_card,
};
pub use loss::{SELF_SIMILARITY_FILL, info_nce_loss, l2_normalize};
pub use model::{ProjectionHead, TsTcc, TsTccConfig, TsTccEncoder};
pub use pretrainer::{
    HISTORY_FILE, PretrainHistory, Pretrained, TsTccPretrainConfig, TsTccTask, default_views,
    pretrain, shuffled_split, write_history,
};
pub use transfer::{
    UNFREEZE_EPOCHS, apply_unfreeze_schedule, freeze_encoder, load_pretrained_encoder,
    load_pretrained_encoder_file, unfreeze_encoder_gradual, unfreeze_stage_at,
};
