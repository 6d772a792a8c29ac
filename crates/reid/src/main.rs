//! The `reid` command-line tool; see `reid --help` and [`reid::cli`].

use clap::{CommandFactory, Parser};

fn main() {
    kiln::cli::reset_sigpipe();
    kiln::alloc::retain_freed_memory();
    // Flags may follow the trailing `KEY VALUE` overrides, as yacs users write them.
    let args = kiln::cli::hoist_flags(&reid::cli::Cli::command(), std::env::args().collect());
    let cli = reid::cli::Cli::parse_from(args);
    // burn-collective logs every tensor transfer at INFO: keep it to warnings.
    kiln::progress::init_logging(kiln::dist::QUIET_LOGS);
    if let Err(e) = reid::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
