//! Masked BiLSTM autoencoder pre-training (in progress).
