//! Progress bars and log output for long work.
//!
//! Progress bars go to stderr through indicatif and disappear when stderr is not a terminal
//! (CI logs, pipes), where the per-epoch `tracing` lines carry the same information.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar over `len` items (a spinner when the length is unknown).
pub fn bar(len: Option<usize>, prefix: &str, enabled: bool) -> ProgressBar {
    let bar = match len {
        Some(n) => ProgressBar::new(n as u64),
        None => ProgressBar::new_spinner(),
    };
    if !enabled {
        bar.set_draw_target(ProgressDrawTarget::hidden());
        return bar;
    }
    let style = ProgressStyle::with_template(
        "{prefix:>14} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} {msg}",
    )
    .expect("valid template");
    bar.set_style(style);
    bar.set_prefix(prefix.to_string());
    bar
}

/// Installs a `tracing` subscriber printing to stderr at `default_level` (`info`, `warn`, ...);
/// `RUST_LOG` overrides it. Calling it twice is harmless.
pub fn init_logging(default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}
