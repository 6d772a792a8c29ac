//! The `moola` command-line tool; see `moola --help` and the crate docs of [`moola::cli`].

use clap::Parser;

fn main() {
    kiln::cli::reset_sigpipe();
    let cli = moola::cli::Cli::parse();
    // burn-collective logs every tensor transfer at INFO: keep it to warnings.
    kiln::progress::init_logging(kiln::dist::QUIET_LOGS);
    if let Err(e) = moola::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
