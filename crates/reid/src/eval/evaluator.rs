//! The validation and test protocols of a training run: embed the query and gallery of a
//! dataset with a model, then score them without centroids or with centroid mode A or B, as
//! the reference's validation and test steps do.

use std::sync::Arc;

use anyhow::Result;
use burn::tensor::backend::Backend;
use kiln::metric_log::Row;

use super::embed::{Embedded, embed_samples, retrieval_options};
use super::{
    CentroidMode, EmbeddingSet, EvalLabels, EvalMetrics, FeatureMatrix, GalleryCamids,
    RetrievalOptions, evaluate, evaluate_centroids,
};
use crate::config::ReidConfig;
use crate::data::{ReidDataset, Sample};
use crate::model::ReidModel;

/// Everything needed to embed and evaluate query + gallery of a dataset.
#[derive(Clone)]
pub struct Evaluator {
    cfg: ReidConfig,
    val: Arc<[Sample]>,
    num_query: usize,
    options: RetrievalOptions,
    progress: bool,
}

impl Evaluator {
    /// The evaluator of a configuration's dataset.
    pub fn new(cfg: &ReidConfig, dataset: &ReidDataset, progress: bool) -> Result<Self> {
        Ok(Self {
            cfg: cfg.clone(),
            val: dataset.val().into(),
            num_query: dataset.num_query(),
            options: retrieval_options(cfg)?,
            progress,
        })
    }

    /// Eval-mode embeddings of query then gallery.
    pub fn embed<B: Backend>(
        &self,
        model: &ReidModel<B>,
        device: &B::Device,
    ) -> Result<(Embedded, Embedded)> {
        let all = embed_samples(model, self.val.clone(), &self.cfg, self.progress, device)?;
        split(all, self.num_query)
    }

    /// The retrieval options.
    pub fn options(&self) -> &RetrievalOptions {
        &self.options
    }
}

fn split(all: Embedded, num_query: usize) -> Result<(Embedded, Embedded)> {
    let dim = all.features.dim();
    let data = all.features.into_vec();
    let (q, g) = data.split_at(num_query * dim);
    Ok((
        Embedded {
            features: FeatureMatrix::new(q.to_vec(), dim)?,
            pids: all.pids[..num_query].to_vec(),
            camids: all.camids[..num_query].to_vec(),
        },
        Embedded {
            features: FeatureMatrix::new(g.to_vec(), dim)?,
            pids: all.pids[num_query..].to_vec(),
            camids: all.camids[num_query..].to_vec(),
        },
    ))
}

/// The borrowed view of an embedded set that the protocols take.
pub fn embedding_set(e: &Embedded) -> EmbeddingSet<'_> {
    EmbeddingSet {
        features: &e.features,
        pids: &e.pids,
        camids: &e.camids,
    }
}

/// One protocol: without centroids, or with them (mode B when `MODEL.KEEP_CAMID_CENTROIDS`,
/// else mode A), as the reference's validation does.
pub fn evaluate_protocol(
    query: &Embedded,
    gallery: &Embedded,
    use_centroids: bool,
    keep_camid_centroids: bool,
    bug_compat: bool,
    options: &RetrievalOptions,
) -> Result<EvalMetrics> {
    if !use_centroids {
        let labels = EvalLabels {
            q_pids: &query.pids,
            q_camids: &query.camids,
            g_pids: &gallery.pids,
            g_camids: GalleryCamids::Single(&gallery.camids),
        };
        return evaluate(&query.features, &gallery.features, &labels, options);
    }
    let mode = if keep_camid_centroids {
        CentroidMode::PerCamera { bug_compat }
    } else {
        CentroidMode::PerIdentity
    };
    evaluate_centroids(embedding_set(query), embedding_set(gallery), mode, options)
}

/// The reference's logged validation scalars.
pub fn metrics_row(m: &EvalMetrics) -> Row {
    [
        ("mAP", m.map),
        ("Top-1", m.top1),
        ("Top-5", m.top5),
        ("Top-10", m.top10),
        ("Top-20", m.top20),
        ("Top-50", m.top50),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}
