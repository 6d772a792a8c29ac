//! Retrieval against gallery centroids (`validation_create_centroids` of the reference's
//! [`modelling/bases.py`](https://github.com/mikwieczorek/centroids-reid/blob/a1825b7a92b2a8d5e223708c7c43ab58a46efbcf/modelling/bases.py#L180)).
//!
//! Queries stay individual; the gallery is replaced by per-identity centroids, the means of the
//! **un-normalised** gallery embeddings (normalisation, when configured, happens afterwards in
//! [`evaluate`]).
//!
//! * **Mode A** ([`CentroidMode::PerIdentity`], `KEEP_CAMID_CENTROIDS=False`): one centroid per
//!   distinct gallery pid (ascending) over all its gallery images. Dummy cameras (queries 0,
//!   centroids 1) mean nothing is ever removed; gallery-only identities stay as distractors.
//! * **Mode B** ([`CentroidMode::PerCamera`], `KEEP_CAMID_CENTROIDS=True`): for every gallery
//!   pid `p` (ascending) and every distinct camera `c` of **p's query images** (ascending), the
//!   mean of p's gallery images seen from a camera ≠ c, labelled `p` with the camera set `U` of
//!   those images; skipped when there is no such image, and emitted only once per distinct `U`
//!   of `p`. Evaluation then removes, for a query (pid p, camera c), p's centroids whose `U`
//!   contains c (`respect_camids=True`). Gallery pids without a query get no centroid at all.
//!
//! **Camera-id bug (issues #21, #41).** The reference reads the gallery images' cameras as
//! `camids[inds]`, with `inds` gallery indices but `camids` the concatenated query+gallery
//! array: gallery image `j` gets the camera of sample `j` of `[query; gallery]`, i.e. the sample
//! `num_query` positions earlier. `bug_compat: true` reproduces that (both the "camera ≠ c"
//! selection and the sets `U` use the wrong cameras; the queries' own cameras are right), for
//! the published numbers; `false` (the default) uses the gallery's own cameras.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};

use super::metrics::{EvalLabels, EvalMetrics, GalleryCamids};
use super::retrieval::{EmbeddingSet, FeatureMatrix, RetrievalOptions, evaluate};

/// Which centroid gallery to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CentroidMode {
    /// Mode A: one centroid per gallery identity, no camera filtering.
    PerIdentity,
    /// Mode B: per identity and per query camera, with camera-set filtering.
    PerCamera {
        /// Reproduce the reference's gallery camera-id offset.
        bug_compat: bool,
    },
}

/// Camera id given to every query in mode A.
pub const MODE_A_QUERY_CAMID: i64 = 0;
/// Camera id given to every centroid in mode A.
pub const MODE_A_CENTROID_CAMID: i64 = 1;

/// A gallery of centroids.
#[derive(Debug, Clone, PartialEq)]
pub struct CentroidGallery {
    /// One (un-normalised) centroid per row.
    pub features: FeatureMatrix,
    /// Identity of each centroid.
    pub pids: Vec<i64>,
    /// Camera set `U` of each centroid (mode A: `[1]`).
    pub camid_sets: Vec<Vec<i64>>,
    /// Gallery indices averaged into each centroid.
    pub members: Vec<Vec<usize>>,
    /// Mode B filtering (`respect_camids`); `false` for mode A.
    pub respect_camids: bool,
}

impl CentroidGallery {
    /// Number of centroids.
    pub fn len(&self) -> usize {
        self.pids.len()
    }

    /// `true` when no centroid was emitted.
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }
}

/// Mean of the given gallery rows, accumulated in f64.
fn mean_rows(gallery: &FeatureMatrix, members: &[usize]) -> Vec<f32> {
    let mut acc = vec![0f64; gallery.dim()];
    for &g in members {
        for (a, &v) in acc.iter_mut().zip(gallery.row(g)) {
            *a += f64::from(v);
        }
    }
    let n = members.len() as f64;
    acc.into_iter().map(|a| (a / n) as f32).collect()
}

fn assemble(
    gallery: &FeatureMatrix,
    entries: Vec<(i64, Vec<i64>, Vec<usize>)>,
    respect_camids: bool,
) -> Result<CentroidGallery> {
    let dim = gallery.dim();
    let mut data = Vec::with_capacity(entries.len() * dim);
    let mut pids = Vec::with_capacity(entries.len());
    let mut camid_sets = Vec::with_capacity(entries.len());
    let mut members = Vec::with_capacity(entries.len());
    for (pid, cams, rows) in entries {
        data.extend(mean_rows(gallery, &rows));
        pids.push(pid);
        camid_sets.push(cams);
        members.push(rows);
    }
    Ok(CentroidGallery {
        features: FeatureMatrix::new(data, dim)?,
        pids,
        camid_sets,
        members,
        respect_camids,
    })
}

/// Gallery indices of every gallery pid, pids ascending, indices ascending.
fn gallery_groups(g_pids: &[i64]) -> BTreeMap<i64, Vec<usize>> {
    let mut groups: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (g, &pid) in g_pids.iter().enumerate() {
        groups.entry(pid).or_default().push(g);
    }
    groups
}

/// Mode A: one centroid per distinct gallery pid (ascending), camera set `[1]`.
pub fn centroids_per_identity(gallery: EmbeddingSet<'_>) -> Result<CentroidGallery> {
    gallery.validate("mode-A centroids (gallery)")?;
    let entries = gallery_groups(gallery.pids)
        .into_iter()
        .map(|(pid, rows)| (pid, vec![MODE_A_CENTROID_CAMID], rows))
        .collect();
    assemble(gallery.features, entries, false)
}

/// Mode B centroids (see the module docs); `q_pids`/`q_camids` are the query labels.
pub fn centroids_per_camera(
    q_pids: &[i64],
    q_camids: &[i64],
    gallery: EmbeddingSet<'_>,
    bug_compat: bool,
) -> Result<CentroidGallery> {
    gallery.validate("mode-B centroids (gallery)")?;
    ensure!(
        q_pids.len() == q_camids.len(),
        "mode-B centroids: {} query pids but {} query camids",
        q_pids.len(),
        q_camids.len()
    );
    let num_q = q_pids.len();
    // The camera the reference attributes to gallery image j.
    let gallery_cam = |j: usize| -> i64 {
        if !bug_compat {
            gallery.camids[j]
        } else if j < num_q {
            q_camids[j]
        } else {
            gallery.camids[j - num_q]
        }
    };
    let mut query_cams: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
    for (&pid, &cam) in q_pids.iter().zip(q_camids) {
        query_cams.entry(pid).or_default().insert(cam);
    }

    let mut entries = Vec::new();
    for (pid, rows) in gallery_groups(gallery.pids) {
        let Some(cams) = query_cams.get(&pid) else {
            continue; // gallery-only identity: no centroid
        };
        let mut emitted: Vec<Vec<i64>> = Vec::new();
        for &c in cams {
            let kept: Vec<usize> = rows
                .iter()
                .copied()
                .filter(|&j| gallery_cam(j) != c)
                .collect();
            if kept.is_empty() {
                continue;
            }
            let set: Vec<i64> = kept
                .iter()
                .map(|&j| gallery_cam(j))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            if emitted.contains(&set) {
                continue;
            }
            emitted.push(set.clone());
            entries.push((pid, set, kept));
        }
    }
    assemble(gallery.features, entries, true)
}

/// Builds the centroid gallery of `mode`.
pub fn build_centroids(
    query: EmbeddingSet<'_>,
    gallery: EmbeddingSet<'_>,
    mode: CentroidMode,
) -> Result<CentroidGallery> {
    match mode {
        CentroidMode::PerIdentity => centroids_per_identity(gallery),
        CentroidMode::PerCamera { bug_compat } => {
            centroids_per_camera(query.pids, query.camids, gallery, bug_compat)
        }
    }
}

/// CMC / mAP of the queries against the centroid gallery of `mode`.
pub fn evaluate_centroids(
    query: EmbeddingSet<'_>,
    gallery: EmbeddingSet<'_>,
    mode: CentroidMode,
    opts: &RetrievalOptions,
) -> Result<EvalMetrics> {
    query.validate("centroid evaluation (query)")?;
    let centroids = build_centroids(query, gallery, mode)?;
    ensure!(
        !centroids.is_empty(),
        "centroid evaluation ({mode:?}): no centroid was built (no gallery identity has a query \
         image seen from another camera)"
    );
    evaluate_against(query, &centroids, opts)
}

/// CMC / mAP of the queries against an already built centroid gallery.
pub fn evaluate_against(
    query: EmbeddingSet<'_>,
    centroids: &CentroidGallery,
    opts: &RetrievalOptions,
) -> Result<EvalMetrics> {
    query.validate("centroid evaluation (query)")?;
    if centroids.respect_camids {
        let labels = EvalLabels {
            q_pids: query.pids,
            q_camids: query.camids,
            g_pids: &centroids.pids,
            g_camids: GalleryCamids::Sets(&centroids.camid_sets),
        };
        evaluate(query.features, &centroids.features, &labels, opts)
    } else {
        let q_camids = vec![MODE_A_QUERY_CAMID; query.pids.len()];
        let g_camids = vec![MODE_A_CENTROID_CAMID; centroids.len()];
        let labels = EvalLabels {
            q_pids: query.pids,
            q_camids: &q_camids,
            g_pids: &centroids.pids,
            g_camids: GalleryCamids::Single(&g_camids),
        };
        evaluate(query.features, &centroids.features, &labels, opts)
    }
}
