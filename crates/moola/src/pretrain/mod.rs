//! Self-supervised pre-training of the classifiers' encoders on unlabelled windows:
//!
//! * [`masked_lstm`]: the masked BiLSTM autoencoder (`MaskedLSTMPretrainer` of the reference),
//!   whose encoder initialises SimpleLSTM's LSTM;
//! * [`ts_tcc`]: TS-TCC contrastive pre-training of the CNN-Transformer's encoder.

pub mod masked_lstm;
pub mod ts_tcc;
