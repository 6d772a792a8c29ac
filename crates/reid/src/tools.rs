//! Inference tools of the `reid` CLI (§8): `create-embeddings`, `get-similar`, `visrank` and
//! `evaluate` on precomputed embeddings. STUB: being written.

use anyhow::Result;
use clap::Args;
use kiln::DeviceKind;

use crate::cli::Common;

/// `reid create-embeddings` (§8.1).
#[derive(Debug, Args)]
pub struct CreateEmbeddingsArgs {
    #[command(flatten)]
    pub common: Common,
}

/// `reid get-similar` (§8.2).
#[derive(Debug, Args)]
pub struct GetSimilarArgs {
    #[command(flatten)]
    pub common: Common,
}

/// `reid visrank` (§8.3).
#[derive(Debug, Args)]
pub struct VisrankArgs {
    #[command(flatten)]
    pub common: Common,
}

/// `reid evaluate` on precomputed embeddings.
#[derive(Debug, Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    pub common: Common,
}

/// Runs `create-embeddings`.
pub fn create_embeddings(
    _args: CreateEmbeddingsArgs,
    _device: DeviceKind,
    _progress: bool,
) -> Result<()> {
    anyhow::bail!("not implemented yet")
}

/// Runs `get-similar`.
pub fn get_similar(_args: GetSimilarArgs, _device: DeviceKind, _progress: bool) -> Result<()> {
    anyhow::bail!("not implemented yet")
}

/// Runs `visrank`.
pub fn visrank(_args: VisrankArgs, _device: DeviceKind, _progress: bool) -> Result<()> {
    anyhow::bail!("not implemented yet")
}

/// Runs `evaluate`.
pub fn evaluate(_args: EvaluateArgs) -> Result<()> {
    anyhow::bail!("not implemented yet")
}
