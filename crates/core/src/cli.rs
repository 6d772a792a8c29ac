//! Command-line arguments every kiln-based tool shares.

use clap::Args;

use crate::backend::DeviceKind;

/// `--device` and `--quiet`, flattened into each tool's top-level parser.
#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// Device: cpu (default backend of this build), ndarray, flex, cuda or cuda:N.
    #[arg(long, global = true, default_value = "cpu")]
    pub device: DeviceKind,
    /// Hide progress bars.
    #[arg(long, global = true)]
    pub quiet: bool,
}

impl RuntimeArgs {
    /// Whether to draw progress bars.
    pub fn progress(&self) -> bool {
        !self.quiet
    }
}

/// Restores the default `SIGPIPE` behaviour so that `tool | head` ends the tool quietly instead
/// of panicking on a closed standard output (Rust ignores `SIGPIPE` by default). Call it first
/// thing in `main`.
pub fn reset_sigpipe() {
    #[cfg(unix)]
    // SAFETY: setting a signal disposition to its default has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
