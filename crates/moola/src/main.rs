//! The `moola` command-line tool; see `moola --help` and the crate docs of [`moola::cli`].

use clap::{CommandFactory, Parser};

fn main() {
    kiln::cli::reset_sigpipe();
    kiln::alloc::retain_freed_memory();
    // Flags may follow the trailing `KEY VALUE` overrides, as yacs users write them.
    let args = kiln::cli::hoist_flags(&moola::cli::Cli::command(), std::env::args().collect());
    let cli = moola::cli::Cli::parse_from(args);
    // burn-collective logs every tensor transfer at INFO: keep it to warnings.
    kiln::progress::init_logging(kiln::dist::QUIET_LOGS);
    if let Err(e) = moola::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
