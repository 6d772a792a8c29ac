//! The `reid` command-line tool; see `reid --help` and [`reid::cli`].

use clap::Parser;

fn main() {
    kiln::cli::reset_sigpipe();
    let cli = reid::cli::Cli::parse();
    // burn-collective logs every tensor transfer at INFO: keep it to warnings.
    kiln::progress::init_logging(kiln::dist::QUIET_LOGS);
    if let Err(e) = reid::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
