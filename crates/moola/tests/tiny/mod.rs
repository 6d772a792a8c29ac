//! `KEY VALUE` overrides of tiny models shared by the CLI tests (`cli.rs`, `ddp.rs`).

/// A TS-TCC encoder small enough for a test: two 1-D convolutions (4 and 8 channels, kernel 3),
/// one transformer layer with two heads, an 8 → 4 projection head.
pub const TS_TCC_ENCODER: &[&str] = &[
    "pretrain.ts_tcc.model.cnn_channels",
    "[4, 8]",
    "pretrain.ts_tcc.model.cnn_kernels",
    "[3]",
    "pretrain.ts_tcc.model.transformer_layers",
    "1",
    "pretrain.ts_tcc.model.transformer_heads",
    "2",
    "pretrain.ts_tcc.model.projection_hidden_dim",
    "8",
    "pretrain.ts_tcc.model.projection_output_dim",
    "4",
];
