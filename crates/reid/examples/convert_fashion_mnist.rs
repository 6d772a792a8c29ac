//! Converts an extracted `dataset-fashion-mnist` Debian package into the Market1501-layout
//! retrieval set of `datasets/fashion-mnist-reid` (see `reid::data::convert_fashion_mnist`).
//!
//! ```text
//! cargo run -p reid --example convert_fashion_mnist -- <extracted-package-dir> <out-root>
//! ```
//!
//! `tools/data/fashion_mnist_reid.sh` downloads the package and runs this.

use std::path::PathBuf;

use anyhow::{Context, Result};
use reid::data::{FashionSpec, convert_fashion_mnist, market1501};

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let usage = "usage: convert_fashion_mnist <extracted-package-dir> <out-root>";
    let src = PathBuf::from(args.next().context(usage)?);
    let out = PathBuf::from(args.next().context(usage)?);
    let summary = convert_fashion_mnist(&src, &out, &FashionSpec::default())?;
    println!(
        "wrote {} classes: {} train / {} query / {} gallery images, {} bytes of JPEG",
        summary.classes, summary.train, summary.query, summary.gallery, summary.bytes
    );
    for source in &summary.sources {
        println!("source: {}", source.display());
    }
    let dataset = market1501(&out)?;
    println!("{}", dataset.summary());
    Ok(())
}
