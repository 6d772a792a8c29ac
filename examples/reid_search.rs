//! reid as a library for search: embed image files with a model (no dataset layout), save them
//! as a gallery with an HNSW index, open it memory-mapped and search it with other images,
//! through the index and exactly. Uses the public API only.
//!
//! ```text
//! cargo run --release --example reid_search                       # bundled images, untrained model
//! cargo run --release --example reid_search -- model.ckpt gallery_dir/ a.jpg b.jpg queries_dir/
//! ```
//!
//! Without arguments it embeds the bundled Fashion-MNIST gallery with a freshly initialised
//! ResNet18 (the rankings then only show the plumbing); with a checkpoint, a directory of gallery
//! images and query images or directories, it searches your own.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kiln::backend::CpuBackend;
use reid::loss::DistanceFunc;
use reid::search::{IndexParams, Quantization, save_gallery};
use reid::{ImageEmbedder, ReidConfig, ReidModelConfig, SavedGallery, SearchMetric, SearchMode};

type B = CpuBackend; // inner (non-autodiff) backend: eval-mode embeddings

fn main() -> Result<()> {
    kiln::progress::init_logging("warn");
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let device = Default::default();
    let bundled = PathBuf::from("datasets/fashion-mnist-reid/market1501");
    // The test transform comes from the configuration: 32×32 for the bundled images.
    let cfg = ReidConfig::load(
        None,
        &["INPUT.SIZE_TEST".to_string(), "[32, 32]".to_string()],
    )?;
    let (embedder, gallery_images, queries) = match args.as_slice() {
        [] => {
            let model = ReidModelConfig::new("resnet18", 1, 512, 10).init::<B>(&device)?;
            (
                ImageEmbedder::new(model, &cfg, &device),
                bundled.join("bounding_box_test"),
                vec![bundled.join("query")],
            )
        }
        [checkpoint, gallery, queries @ ..] if !queries.is_empty() => (
            ImageEmbedder::<B>::load(checkpoint, &cfg, &device)?,
            gallery.clone(),
            queries.to_vec(),
        ),
        _ => anyhow::bail!("usage: reid_search [CHECKPOINT GALLERY_DIR QUERY...]"),
    };

    // 1. Embed the gallery images and save them as create-embeddings does, with an index.
    let (paths, features) = embedder.embed_images(&gallery_images)?;
    let dir = std::env::temp_dir().join(format!("reid-search-example-{}", std::process::id()));
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    save_gallery(&dir, &features, &names)?;
    let metric = SearchMetric {
        normalize: true,
        distance: DistanceFunc::Cosine,
    };
    let params = IndexParams {
        quantization: Quantization::F16,
        ..IndexParams::default()
    };
    SavedGallery::open(&dir, false)?.build_index(metric, params, false)?;

    // 2. Open it memory-mapped and search it with the query images.
    let gallery = SavedGallery::open(&dir, true)?;
    let mut query_paths = Vec::new();
    let mut query_rows = Vec::new();
    for q in &queries {
        let (p, f) = embedder.embed_images(q)?;
        query_paths.extend(p);
        query_rows.extend_from_slice(f.as_slice());
    }
    let found = gallery.search(&query_rows, 3, metric, SearchMode::Index)?;
    let exact = gallery.search(&query_rows, 3, metric, SearchMode::Exact)?;
    for (q, matches) in query_paths.iter().zip(&found).take(5) {
        let best: Vec<String> = matches
            .iter()
            .map(|m| format!("{} ({:.3})", gallery.paths()[m.index], m.distance))
            .collect();
        println!("{} → {}", q.display(), best.join(", "));
    }
    println!(
        "{} queries against {} gallery images ({}-d): recall@3 of the index {:.3}",
        query_paths.len(),
        gallery.len(),
        gallery.dim(),
        reid::search::recall_at_k(&found, &exact, 3)
    );
    std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    Ok(())
}
