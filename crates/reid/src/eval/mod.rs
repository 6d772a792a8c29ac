//! # Evaluation: CMC / mAP with and without gallery centroids
//!
//! Host-side, on f32 embeddings (the model's post-BN embeddings, query first then gallery, as
//! `Vec<f32>` wrapped in a [`FeatureMatrix`]):
//!
//! * [`metrics`]: the reference's `eval_func` exactly (same-pid-same-camera removal, skipped
//!   queries, CMC clipped at 1, AP, top-k {1, 5, 10, 20, 50}), on a distance matrix, on explicit rankings,
//!   or per query from a distance row;
//! * [`retrieval`]: normalisation + squared-Euclidean / cosine distances + metrics, chunked over
//!   queries and parallel (a Market-sized evaluation never holds the Q × G matrix);
//! * [`centroids`]: the centroid galleries, mode A and mode B (with the reference's camera-id
//!   bug on request);
//! * [`report`]: the three protocols side by side, as JSON and as a table;
//! * [`rerank`]: k-reciprocal re-ranking and average query expansion (`TEST.RERANK`, `TEST.AQE`);
//! * [`embed`]: a model's eval-mode embeddings of an image set (the input of all of the above);
//! * [`evaluator`]: embedding + the validation and test protocols, as training and `reid test` run them.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use reid::eval::{EmbeddingSet, EvalReport, FeatureMatrix, RetrievalOptions};
//! # let (q_emb, g_emb): (Vec<f32>, Vec<f32>) = (vec![], vec![]);
//! # let (q_pids, q_cams, g_pids, g_cams): (Vec<i64>, Vec<i64>, Vec<i64>, Vec<i64>) = Default::default();
//! let query = FeatureMatrix::new(q_emb, 2048)?;
//! let gallery = FeatureMatrix::new(g_emb, 2048)?;
//! let report = EvalReport::compute(
//!     EmbeddingSet { features: &query, pids: &q_pids, camids: &q_cams },
//!     EmbeddingSet { features: &gallery, pids: &g_pids, camids: &g_cams },
//!     &RetrievalOptions::default(),
//!     false, // corrected mode B
//! )?;
//! println!("{report}");
//! report.write_json("metrics.json")?;
//! # Ok(()) }
//! ```

pub mod centroids;
pub mod embed;
pub mod evaluator;
pub mod metrics;
pub mod report;
pub mod rerank;
pub mod retrieval;

pub use centroids::{
    CentroidGallery, CentroidMode, build_centroids, centroids_per_camera, centroids_per_identity,
    evaluate_against, evaluate_centroids,
};
pub use evaluator::{Evaluator, embedding_set, evaluate_protocol, metrics_row};
pub use metrics::{
    DEFAULT_MAX_RANK, EvalLabels, EvalMetrics, GalleryCamids, QueryOutcome, TOP_K, aggregate,
    argsort, eval_func, eval_rankings, query_outcome_from_distances, query_outcome_from_ranking,
};
pub use report::EvalReport;
pub use rerank::{AqeParams, RerankParams, average_query_expansion, re_rank_features, re_ranking};
pub use retrieval::{
    EmbeddingSet, FeatureMatrix, RetrievalOptions, distance_matrix, evaluate, query_outcomes,
};
