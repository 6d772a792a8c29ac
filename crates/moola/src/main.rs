//! The `moola` command-line tool; see `moola --help` and the crate docs of [`moola::cli`].

fn main() {
    kiln::cli::reset_sigpipe();
    if let Err(e) = moola::cli::main_with(std::env::args().collect()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
