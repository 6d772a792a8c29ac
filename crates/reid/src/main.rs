//! The `reid` command-line tool; see `reid --help` and the crate docs of [`reid::cli`].

fn main() {
    kiln::cli::reset_sigpipe();
    if let Err(e) = reid::cli::main_with(std::env::args().collect()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
