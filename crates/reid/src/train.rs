//! Training and testing (§6). STUB: being written.
use anyhow::Result;
use kiln::DeviceKind;

use crate::cli::StepKind;
use crate::config::ReidConfig;

/// `reid train`.
pub fn run_train(
    _cfg: ReidConfig,
    _step: StepKind,
    _device: DeviceKind,
    _progress: bool,
) -> Result<()> {
    anyhow::bail!("not implemented yet")
}

/// `reid test`.
pub fn run_test(_cfg: ReidConfig, _device: DeviceKind, _progress: bool) -> Result<()> {
    anyhow::bail!("not implemented yet")
}
