//! Self-supervised pre-training of the classifiers' encoders on unlabelled windows:
//!
//! * [`masked_lstm`]: the masked BiLSTM autoencoder (`MaskedLSTMPretrainer` of the reference),
//!   whose encoder initialises SimpleLSTM's LSTM;
//! * [`ts_tcc`]: TS-TCC contrastive pre-training of the CNN-Transformer's encoder.

pub mod masked_lstm;
pub mod ts_tcc;

/// Which encoder a pre-training run trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PretrainMethod {
    /// Masked BiLSTM autoencoder: SimpleLSTM's encoder.
    MaskedLstm,
    /// TS-TCC contrastive pre-training: the CNN-Transformer's encoder.
    TsTcc,
}

impl std::fmt::Display for PretrainMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::MaskedLstm => "masked-lstm",
            Self::TsTcc => "ts-tcc",
        })
    }
}
