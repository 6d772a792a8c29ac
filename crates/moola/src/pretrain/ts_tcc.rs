//! TS-TCC contrastive pre-training (in progress).
