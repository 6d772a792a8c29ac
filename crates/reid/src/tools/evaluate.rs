//! `evaluate`: mAP / CMC of precomputed embeddings, without centroids and with centroid modes A
//! and B side by side ([`EvalReport`]), with `TEST.FEAT_NORM` and `SOLVER.DISTANCE_FUNC` from
//! the configuration.

use std::path::Path;

use anyhow::{Result, ensure};

use super::{EvaluateArgs, npy, output_dir};
use crate::config::ReidConfig;
use crate::eval::{EmbeddingSet, EvalReport, FeatureMatrix, RetrievalOptions};

/// Camera id given to every query when `--query-camids` is not given (the fashion datasets').
pub const DEFAULT_QUERY_CAMID: i64 = 0;
/// Camera id given to every gallery image when `--gallery-camids` is not given.
pub const DEFAULT_GALLERY_CAMID: i64 = 1;

/// Query and gallery embeddings with their labels, checked for consistency.
#[derive(Debug, Clone)]
pub struct EvaluateInputs {
    /// Query embeddings.
    pub query: FeatureMatrix,
    /// Gallery embeddings.
    pub gallery: FeatureMatrix,
    /// Query identities.
    pub q_pids: Vec<i64>,
    /// Gallery identities.
    pub g_pids: Vec<i64>,
    /// Query cameras.
    pub q_camids: Vec<i64>,
    /// Gallery cameras.
    pub g_camids: Vec<i64>,
}

fn labels(
    path: Option<&Path>,
    rows: usize,
    default: i64,
    what: &str,
    emb: &Path,
) -> Result<Vec<i64>> {
    let Some(path) = path else {
        return Ok(vec![default; rows]);
    };
    let values = npy::read_int_vector(path)?;
    ensure!(
        values.len() == rows,
        "{what} {} has {} entries but the embeddings {} have {rows} rows",
        path.display(),
        values.len(),
        emb.display()
    );
    Ok(values)
}

impl EvaluateInputs {
    /// Reads the `.npy` files of `args` (float embeddings `[n, dim]`, integer ids `[n]` of any
    /// width). Errors name the files: a wrong dtype or rank, different row counts, or query and
    /// gallery embeddings of different dimensions.
    pub fn load(args: &EvaluateArgs) -> Result<Self> {
        let (q_values, [q_rows, q_dim]) = npy::read_f32_matrix(&args.query_embeddings)?;
        let (g_values, [g_rows, g_dim]) = npy::read_f32_matrix(&args.gallery_embeddings)?;
        ensure!(
            q_dim == g_dim,
            "the query embeddings {} have dimension {q_dim} but the gallery embeddings {} have \
             dimension {g_dim}",
            args.query_embeddings.display(),
            args.gallery_embeddings.display()
        );
        ensure!(
            q_rows > 0 && q_dim > 0,
            "the query embeddings {} are empty (shape [{q_rows}, {q_dim}])",
            args.query_embeddings.display()
        );
        ensure!(
            g_rows > 0,
            "the gallery embeddings {} are empty (shape [{g_rows}, {g_dim}])",
            args.gallery_embeddings.display()
        );
        let q = &args.query_embeddings;
        let g = &args.gallery_embeddings;
        Ok(Self {
            q_pids: labels(Some(&args.query_pids), q_rows, 0, "query pids", q)?,
            g_pids: labels(Some(&args.gallery_pids), g_rows, 0, "gallery pids", g)?,
            q_camids: labels(
                args.query_camids.as_deref(),
                q_rows,
                DEFAULT_QUERY_CAMID,
                "query camids",
                q,
            )?,
            g_camids: labels(
                args.gallery_camids.as_deref(),
                g_rows,
                DEFAULT_GALLERY_CAMID,
                "gallery camids",
                g,
            )?,
            query: FeatureMatrix::new(q_values, q_dim)?,
            gallery: FeatureMatrix::new(g_values, g_dim)?,
        })
    }
}

/// The three protocols on `inputs` ([`EvalReport::compute`]).
pub fn evaluate_arrays(
    inputs: &EvaluateInputs,
    opts: &RetrievalOptions,
    bug_compat: bool,
) -> Result<EvalReport> {
    EvalReport::compute(
        EmbeddingSet {
            features: &inputs.query,
            pids: &inputs.q_pids,
            camids: &inputs.q_camids,
        },
        EmbeddingSet {
            features: &inputs.gallery,
            pids: &inputs.g_pids,
            camids: &inputs.g_camids,
        },
        opts,
        bug_compat,
    )
}

pub(super) fn run(cfg: &ReidConfig, args: &EvaluateArgs) -> Result<()> {
    let opts = crate::infer::retrieval_options(cfg)?;
    let inputs = EvaluateInputs::load(args)?;
    let report = evaluate_arrays(&inputs, &opts, args.camid_bug_compat)?;
    let out = args.out.clone().unwrap_or_else(|| output_dir(cfg));
    let path = out.join("evaluation.json");
    report.write_json(&path)?;
    println!(
        "{} queries × {} gallery images, {}-d, {} distance{}:",
        inputs.query.rows(),
        inputs.gallery.rows(),
        inputs.query.dim(),
        opts.distance,
        if opts.feat_norm {
            " on L2-normalised features"
        } else {
            ""
        }
    );
    print!("{}", report.table());
    println!("→ {}", path.display());
    Ok(())
}
