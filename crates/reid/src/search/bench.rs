//! `reid bench-search`: the index against exact search on a synthetic gallery of clustered
//! embeddings, the numbers of docs/retrieval.md.
//!
//! The gallery mimics a re-id / product catalogue: [`SyntheticGallery`] draws `categories`
//! category centres, one identity centre per 10 rows around a random category, and each row
//! (and each query, drawn the same way but never in the gallery) around a random identity,
//! all L2-normalised. Per gallery size and storage it reports the build time, the index size
//! on disk and in memory, recall@k against exact search, single-query latency p50 / p99 and
//! batched queries per second, for the index (at each `--ef`) and for exact search. Each
//! index row comes twice: the index's own answer, and what `get-similar` returns
//! ([`AnnIndex::search_rescored`]: a few more candidates re-scored with the f32 rows).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use clap::Args;
use rand::prelude::*;
use rand_distr::StandardNormal;
use rayon::prelude::*;
use serde::Serialize;

use super::index::{AnnIndex, IndexParams, Quantization};
use super::{ExactSearch, Match, SearchMetric, recall_at_k};
use crate::loss::DistanceFunc;

/// A synthetic clustered gallery and its queries (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct SyntheticGallery {
    /// Embedding dimension.
    pub dim: usize,
    /// Number of category centres.
    pub categories: usize,
    /// Gallery rows per identity (on average).
    pub rows_per_identity: usize,
    /// Spread of identities around their category (per component, before normalisation, in
    /// units of the category centre's component scale).
    pub identity_spread: f32,
    /// Spread of rows around their identity, relative to the identity centre's norm.
    pub row_spread: f32,
    /// Seed.
    pub seed: u64,
}

impl Default for SyntheticGallery {
    fn default() -> Self {
        SyntheticGallery {
            dim: 2048,
            categories: 100,
            rows_per_identity: 10,
            identity_spread: 0.8,
            row_spread: 0.6,
            seed: 42,
        }
    }
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

impl SyntheticGallery {
    fn identity_centres(&self, identities: usize) -> Vec<f32> {
        let d = self.dim;
        let mut rng = StdRng::seed_from_u64(self.seed);
        let cats: Vec<f32> = (0..self.categories * d)
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect();
        (0..identities)
            .into_par_iter()
            .flat_map_iter(|i| {
                let mut r = StdRng::seed_from_u64(self.seed ^ (0x9E37_79B9 + i as u64 * 7919));
                let c = r.random_range(0..self.categories);
                let mut v: Vec<f32> = (0..d)
                    .map(|j| {
                        cats[c * d + j] + self.identity_spread * r.sample::<f32, _>(StandardNormal)
                    })
                    .collect();
                normalize(&mut v);
                v
            })
            .collect()
    }

    fn rows_around(&self, centres: &[f32], n: usize, salt: u64) -> Vec<f32> {
        let d = self.dim;
        let ids = centres.len() / d;
        let scale = self.row_spread / (d as f32).sqrt();
        (0..n)
            .into_par_iter()
            .flat_map_iter(|i| {
                let mut r = StdRng::seed_from_u64(self.seed ^ salt ^ (i as u64 * 104_729 + 3));
                let id = r.random_range(0..ids);
                let mut v: Vec<f32> = (0..d)
                    .map(|j| centres[id * d + j] + scale * r.sample::<f32, _>(StandardNormal))
                    .collect();
                normalize(&mut v);
                v
            })
            .collect()
    }

    /// `rows` gallery rows and `queries` query rows, row-major.
    pub fn generate(&self, rows: usize, queries: usize) -> (Vec<f32>, Vec<f32>) {
        let centres = self.identity_centres((rows / self.rows_per_identity.max(1)).max(1));
        (
            self.rows_around(&centres, rows, 0x5EED_0001),
            self.rows_around(&centres, queries, 0x5EED_0002),
        )
    }
}

/// `reid bench-search` arguments.
#[derive(Debug, Args)]
pub struct BenchSearchArgs {
    /// Gallery sizes (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "100000")]
    pub rows: Vec<usize>,
    /// Embedding dimension.
    #[arg(long, default_value_t = 2048)]
    pub dim: usize,
    /// Index storages to build (comma-separated: f32, f16, i8).
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    pub quantization: Vec<Quantization>,
    /// HNSW graph degree M.
    #[arg(long, default_value_t = 16)]
    pub connectivity: usize,
    /// HNSW ef_construction.
    #[arg(long, default_value_t = 128)]
    pub expansion_add: usize,
    /// Search beam widths ef to report (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "64,128")]
    pub ef: Vec<usize>,
    /// Candidates re-scored with the f32 rows in the `+ f32 re-score` rows (comma-separated;
    /// `get-similar --rescore`; default and least: max(2k, k + 8)).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub rescore: Vec<usize>,
    /// Neighbours per query (recall@k).
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Queries for recall, index latency and batched throughput.
    #[arg(long, default_value_t = 500)]
    pub queries: usize,
    /// Queries timed one at a time with exact search (it takes ~N·dim·4 bytes of memory
    /// traffic each).
    #[arg(long, default_value_t = 20)]
    pub exact_single: usize,
    /// Where to save each index to measure its size on disk (default: a temporary directory,
    /// removed afterwards). Indexes saved under a directory given here are kept, as
    /// `bench-<rows>-<storage>/`, for `--reuse`.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Search an index that an earlier run with the same `--dir`, gallery (`--rows`, `--dim`,
    /// `--seed`) and build parameters kept, instead of building it again (a 10^6-row build
    /// takes minutes); its build time is then reported from that run.
    #[arg(long, requires = "dir")]
    pub reuse: bool,
    /// Seed of the synthetic gallery.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Write the rows as JSON here too.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// One line of the benchmark table.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    /// Gallery rows.
    pub rows: usize,
    /// `exact` or `hnsw <storage> ef=<ef>`.
    pub method: String,
    /// Build time in seconds (0 for exact).
    pub build_s: f64,
    /// Bytes on disk (the index file; the f32 embeddings for exact).
    pub disk_bytes: u64,
    /// Bytes in memory (index graph + vectors; the f32 embeddings for exact).
    pub memory_bytes: u64,
    /// Recall@k against exact search.
    pub recall: f64,
    /// Single-query latency, median, ms.
    pub p50_ms: f64,
    /// Single-query latency, 99th percentile, ms.
    pub p99_ms: f64,
    /// Queries per second, all queries in one batch on all cores.
    pub batch_qps: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn latencies(n: usize, mut f: impl FnMut(usize) -> Result<()>) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(i)?;
        out.push(t.elapsed().as_secs_f64() * 1e3);
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// Runs the benchmark and prints the table (markdown).
pub fn run(args: &BenchSearchArgs) -> Result<Vec<BenchRow>> {
    ensure!(
        args.queries > 0 && args.k > 0,
        "--queries and --k must be positive"
    );
    let metric = SearchMetric {
        normalize: true,
        distance: DistanceFunc::Cosine,
    };
    let tmp = tempfile_dir(args.dir.as_deref())?;
    let mut table = Vec::new();
    println!(
        "| rows | method | build s | disk MB | memory MB | recall@{} | p50 ms | p99 ms | batch q/s |",
        args.k
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    let print = |r: &BenchRow| {
        println!(
            "| {} | {} | {:.1} | {:.0} | {:.0} | {:.4} | {:.2} | {:.2} | {:.1} |",
            r.rows,
            r.method,
            r.build_s,
            r.disk_bytes as f64 / 1e6,
            r.memory_bytes as f64 / 1e6,
            r.recall,
            r.p50_ms,
            r.p99_ms,
            r.batch_qps
        )
    };
    for &rows in &args.rows {
        let generator = SyntheticGallery {
            dim: args.dim,
            seed: args.seed,
            ..SyntheticGallery::default()
        };
        let t = Instant::now();
        let (gallery, queries) = generator.generate(rows, args.queries);
        tracing::info!("generated {rows} × {} in {:.1?}", args.dim, t.elapsed());
        let d = args.dim;
        let exact = ExactSearch::new(&gallery, d, metric)?;
        let t = Instant::now();
        let truth = exact.search(&queries, args.k)?;
        let batch_s = t.elapsed().as_secs_f64();
        let singles = args.exact_single.min(args.queries);
        let lat = latencies(singles, |i| {
            exact
                .search(&queries[i * d..(i + 1) * d], args.k)
                .map(|_| ())
        })?;
        let row = BenchRow {
            rows,
            method: "exact (gemm, f32)".into(),
            build_s: 0.0,
            disk_bytes: (gallery.len() * 4) as u64,
            memory_bytes: (gallery.len() * 4) as u64,
            recall: 1.0,
            p50_ms: percentile(&lat, 0.5),
            p99_ms: percentile(&lat, 0.99),
            batch_qps: args.queries as f64 / batch_s,
        };
        print(&row);
        table.push(row);

        for &quant in &args.quantization {
            let params = IndexParams {
                connectivity: args.connectivity,
                expansion_add: args.expansion_add,
                expansion_search: args.ef.first().copied().unwrap_or(64),
                quantization: quant,
            };
            let dir = tmp.join(format!("bench-{rows}-{quant}"));
            let settings = BenchSettings {
                rows,
                dim: d,
                seed: args.seed,
                connectivity: params.connectivity,
                expansion_add: params.expansion_add,
                quantization: quant,
            };
            let mut stamp = BenchStamp {
                settings,
                build_s: 0.0,
            };
            let reused = if args.reuse {
                BenchStamp::reusable(&dir, &settings)?
            } else {
                None
            };
            let mut index = match reused {
                Some(build_s) => {
                    stamp.build_s = build_s;
                    tracing::info!("reusing the index in {}", dir.display());
                    AnnIndex::open(&dir, false)?
                }
                None => {
                    let t = Instant::now();
                    let index = AnnIndex::build(&gallery, d, metric, params, true)?;
                    stamp.build_s = t.elapsed().as_secs_f64();
                    tracing::info!("built the {quant} index in {:.1} s", stamp.build_s);
                    index.save(&dir)?;
                    kiln::io::write_json(dir.join(BenchStamp::FILE), &stamp)?;
                    index
                }
            };
            let path = dir.join(super::index::INDEX_FILE);
            let disk = std::fs::metadata(&path)
                .with_context(|| format!("cannot stat {}", path.display()))?
                .len();
            if args.dir.is_none() {
                std::fs::remove_dir_all(&dir).ok();
            }
            let name = format!(
                "hnsw {quant} M={} efc={}",
                args.connectivity, args.expansion_add
            );
            for &ef in &args.ef {
                index.set_expansion_search(ef);
                // The index's own answer, then what `get-similar` returns: a few more
                // candidates re-scored with the f32 rows.
                let variants = std::iter::once(None).chain(args.rescore.iter().map(Some));
                for rescore in variants {
                    if let Some(&n) = rescore {
                        index.set_rescore_candidates(n);
                    }
                    let index = &index;
                    let search = |q: &[f32]| match rescore {
                        Some(_) => index.search_rescored(q, args.k, &gallery, metric),
                        None => index.search(q, args.k),
                    };
                    let mut found: Vec<Vec<Match>> = Vec::with_capacity(args.queries);
                    let lat = latencies(args.queries, |i| {
                        found.push(search(&queries[i * d..(i + 1) * d])?);
                        Ok(())
                    })?;
                    let t = Instant::now();
                    queries
                        .par_chunks(d)
                        .map(search)
                        .collect::<Result<Vec<_>>>()?;
                    let batch_s = t.elapsed().as_secs_f64();
                    let row = BenchRow {
                        rows,
                        method: if rescore.is_some() {
                            format!(
                                "{name} ef={ef} + f32 re-score of {}",
                                index.rescore_candidates(args.k)
                            )
                        } else {
                            format!("{name} ef={ef}")
                        },
                        build_s: stamp.build_s,
                        disk_bytes: disk,
                        memory_bytes: index.memory_bytes() as u64,
                        recall: recall_at_k(&found, &truth, args.k),
                        p50_ms: percentile(&lat, 0.5),
                        p99_ms: percentile(&lat, 0.99),
                        batch_qps: args.queries as f64 / batch_s,
                    };
                    print(&row);
                    table.push(row);
                }
            }
        }
    }
    if args.dir.is_none() {
        std::fs::remove_dir_all(&tmp).ok();
    }
    if let Some(path) = &args.json {
        kiln::io::write_json(path, &table)?;
    }
    Ok(table)
}

/// What a kept index was made from: the gallery and the build parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
struct BenchSettings {
    rows: usize,
    dim: usize,
    seed: u64,
    connectivity: usize,
    expansion_add: usize,
    quantization: Quantization,
}

/// `bench.json` beside a kept index: its settings and its build time (for `--reuse`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct BenchStamp {
    #[serde(flatten)]
    settings: BenchSettings,
    build_s: f64,
}

impl BenchStamp {
    const FILE: &str = "bench.json";

    /// The build time of the index kept in `dir` when it was made with `wanted`, `None` when
    /// there is none (or another), so that it is built again.
    fn reusable(dir: &std::path::Path, wanted: &BenchSettings) -> Result<Option<f64>> {
        let path = dir.join(Self::FILE);
        if !path.is_file() || !dir.join(super::index::INDEX_FILE).is_file() {
            return Ok(None);
        }
        let kept: BenchStamp = kiln::io::read_json(&path)?;
        let same = kept.settings == *wanted;
        if !same {
            tracing::warn!(
                "{} was made with other settings ({:?}): building the index again",
                path.display(),
                kept.settings
            );
        }
        Ok(same.then_some(kept.build_s))
    }
}

fn tempfile_dir(dir: Option<&std::path::Path>) -> Result<PathBuf> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => std::env::temp_dir().join(format!("reid-bench-search-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}
