//! A random forest of weighted CART classification trees with scikit-learn's semantics, for the
//! RF base model and the stacking meta-learner.
//!
//! What it reproduces of `sklearn.ensemble.RandomForestClassifier` (and why no crate is used,
//! see [`super`]'s docs):
//!
//! * each tree sees a bootstrap sample (`n` draws with replacement) expressed as integer sample
//!   weights, its own seed derived from the forest's seed;
//! * class weights `None`, `"balanced"` (`n / (k · count_c)` on the whole training set) or
//!   `"balanced_subsample"` (the same computed on each tree's bootstrap sample), multiplied into
//!   the sample weights;
//! * exhaustive split search on weighted Gini impurity over `max_features` features drawn at
//!   random per node (more while every feature drawn so far is constant in the node, as
//!   scikit-learn's splitter does), thresholds at midpoints between values more than 1e-7
//!   apart;
//! * growth until `max_depth`, a pure node, fewer than `min_samples_split` (distinct) samples or
//!   no feature that separates the node;
//! * leaves hold the weighted class distribution; the forest's probability is the mean of the
//!   trees' leaf distributions (`predict_proba`);
//! * out-of-bag probabilities and accuracy (`oob_score_`) over the rows left out of at least one
//!   bootstrap.
//!
//! Random streams differ from NumPy's, so individual trees differ from scikit-learn's for the
//! same seed; fits are deterministic for a given seed whatever the number of threads.

use anyhow::{Result, ensure};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Number of features tried at each split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxFeatures {
    /// `max(1, floor(sqrt(n_features)))` (scikit-learn's `"sqrt"`, the classifier default).
    Sqrt,
    /// Every feature.
    All,
    /// A fixed number (capped at the number of features).
    Count(usize),
}

impl MaxFeatures {
    fn resolve(self, n_features: usize) -> usize {
        match self {
            MaxFeatures::Sqrt => ((n_features as f64).sqrt().floor() as usize).max(1),
            MaxFeatures::All => n_features,
            MaxFeatures::Count(k) => k.clamp(1, n_features.max(1)),
        }
    }
}

/// Class weighting (scikit-learn's `class_weight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeight {
    /// Every sample weighs 1.
    None,
    /// `n / (k · count_c)` on the training set.
    Balanced,
    /// `n / (k · count_c)` on each tree's bootstrap sample.
    BalancedSubsample,
}

/// Forest hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForestParams {
    /// Number of trees.
    pub n_trees: usize,
    /// Maximum depth (root = depth 0); `None` grows until the leaves are pure.
    pub max_depth: Option<usize>,
    /// A node with fewer (distinct) samples is a leaf.
    pub min_samples_split: usize,
    /// Features tried per split.
    pub max_features: MaxFeatures,
    /// Class weighting.
    pub class_weight: ClassWeight,
    /// Bootstrap sampling per tree (otherwise every tree sees every row once).
    pub bootstrap: bool,
    /// Compute out-of-bag probabilities and accuracy (needs `bootstrap`).
    pub oob_score: bool,
    /// Seed of the whole forest.
    pub seed: u64,
}

impl Default for ForestParams {
    /// scikit-learn's defaults with 100 trees, seed 1337.
    fn default() -> Self {
        Self {
            n_trees: 100,
            max_depth: None,
            min_samples_split: 2,
            max_features: MaxFeatures::Sqrt,
            class_weight: ClassWeight::None,
            bootstrap: true,
            oob_score: false,
            seed: 1337,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Node {
    Split {
        feature: usize,
        threshold: f64,
        left: usize,
        right: usize,
    },
    Leaf {
        proba: Vec<f64>,
    },
}

/// One fitted tree: nodes in creation order, the root first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    fn leaf(&self, row: &[f64]) -> &[f64] {
        let mut at = 0;
        loop {
            match &self.nodes[at] {
                Node::Leaf { proba } => return proba,
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    at = if row[*feature] <= *threshold {
                        *left
                    } else {
                        *right
                    }
                }
            }
        }
    }
}

/// A fitted forest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forest {
    params: ForestParams,
    n_classes: usize,
    n_features: usize,
    trees: Vec<Tree>,
    /// Out-of-bag probabilities per training row (`None` for a row in every bootstrap).
    #[serde(default)]
    oob_proba: Option<Vec<Option<Vec<f64>>>>,
}

/// SplitMix64: independent per-tree seeds from the forest's seed.
fn tree_seed(seed: u64, tree: usize) -> u64 {
    let mut z = seed.wrapping_add((tree as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n / (k · count_c)` per class over the weighted `counts`, `k` = classes present.
fn balanced(y: &[usize], counts: &[f64], n_classes: usize) -> Vec<f64> {
    let mut per_class = vec![0.0; n_classes];
    for (&c, &w) in y.iter().zip(counts) {
        per_class[c] += w;
    }
    let total: f64 = per_class.iter().sum();
    let present = per_class.iter().filter(|&&c| c > 0.0).count() as f64;
    per_class
        .iter()
        .map(|&c| if c > 0.0 { total / (present * c) } else { 0.0 })
        .collect()
}

impl Forest {
    /// Fits a forest on `x` (`n` rows of equal length) and class indices `y` in `0..n_classes`.
    pub fn fit(
        x: &[Vec<f64>],
        y: &[usize],
        n_classes: usize,
        params: &ForestParams,
    ) -> Result<Forest> {
        let n = x.len();
        ensure!(n > 0, "cannot fit a forest on no rows");
        ensure!(y.len() == n, "{n} rows but {} labels", y.len());
        ensure!(params.n_trees > 0, "a forest needs at least one tree");
        let n_features = x[0].len();
        ensure!(
            n_features > 0,
            "cannot fit a forest on rows without features"
        );
        ensure!(
            x.iter().all(|r| r.len() == n_features),
            "rows of unequal length"
        );
        ensure!(
            x.iter().flatten().all(|v| v.is_finite()),
            "forest input contains non-finite values"
        );
        ensure!(
            y.iter().all(|&c| c < n_classes),
            "class index out of range for {n_classes} classes"
        );
        ensure!(
            !params.oob_score || params.bootstrap,
            "out-of-bag estimates need bootstrap sampling"
        );
        let global = match params.class_weight {
            ClassWeight::Balanced => balanced(y, &vec![1.0; n], n_classes),
            _ => vec![1.0; n_classes],
        };
        let mtry = params.max_features.resolve(n_features);
        // Presorted row order of every feature, shared by all trees.
        let order: Vec<Vec<usize>> = (0..n_features)
            .map(|f| {
                let mut idx: Vec<usize> = (0..n).collect();
                idx.sort_by(|&a, &b| x[a][f].total_cmp(&x[b][f]));
                idx
            })
            .collect();
        let fitted: Vec<(Tree, Vec<f64>)> = (0..params.n_trees)
            .into_par_iter()
            .map(|t| {
                let mut rng = StdRng::seed_from_u64(tree_seed(params.seed, t));
                let mut counts = vec![0.0; n];
                if params.bootstrap {
                    for _ in 0..n {
                        counts[rng.random_range(0..n)] += 1.0;
                    }
                } else {
                    counts.fill(1.0);
                }
                let class_w = match params.class_weight {
                    ClassWeight::BalancedSubsample => balanced(y, &counts, n_classes),
                    _ => global.clone(),
                };
                let w: Vec<f64> = counts.iter().zip(y).map(|(c, &k)| c * class_w[k]).collect();
                let tree = Builder {
                    x,
                    y,
                    w: &w,
                    order: &order,
                    n_classes,
                    mtry,
                    params,
                }
                .build(&mut rng);
                (tree, counts)
            })
            .collect();
        let oob_proba = params.oob_score.then(|| {
            (0..n)
                .map(|i| {
                    let mut sum = vec![0.0; n_classes];
                    let mut k = 0usize;
                    for (tree, counts) in &fitted {
                        if counts[i] == 0.0 {
                            for (s, p) in sum.iter_mut().zip(tree.leaf(&x[i])) {
                                *s += p;
                            }
                            k += 1;
                        }
                    }
                    (k > 0).then(|| sum.iter().map(|s| s / k as f64).collect())
                })
                .collect()
        });
        Ok(Forest {
            params: params.clone(),
            n_classes,
            n_features,
            trees: fitted.into_iter().map(|(t, _)| t).collect(),
            oob_proba,
        })
    }

    /// Mean of the trees' leaf class distributions, `[rows, n_classes]`.
    pub fn predict_proba(&self, x: &[Vec<f64>]) -> Result<Vec<Vec<f64>>> {
        ensure!(
            x.iter().all(|r| r.len() == self.n_features),
            "the forest was fitted on {} features",
            self.n_features
        );
        Ok(x.par_iter()
            .map(|row| {
                let mut sum = vec![0.0; self.n_classes];
                for tree in &self.trees {
                    for (s, p) in sum.iter_mut().zip(tree.leaf(row)) {
                        *s += p;
                    }
                }
                let k = self.trees.len() as f64;
                sum.iter().map(|s| s / k).collect()
            })
            .collect())
    }

    /// Out-of-bag probabilities per training row (`None` for rows that every bootstrap drew);
    /// `None` unless fitted with `oob_score`.
    pub fn oob_proba(&self) -> Option<&[Option<Vec<f64>>]> {
        self.oob_proba.as_deref()
    }

    /// Out-of-bag accuracy against the training labels `y` over the rows with an OOB estimate.
    pub fn oob_score(&self, y: &[usize]) -> Option<f64> {
        let oob = self.oob_proba.as_ref()?;
        let (mut hits, mut n) = (0usize, 0usize);
        for (p, &t) in oob.iter().zip(y) {
            if let Some(p) = p {
                n += 1;
                hits += usize::from(kiln::metrics::argmax(p) == t);
            }
        }
        (n > 0).then(|| hits as f64 / n as f64)
    }

    /// Number of trees.
    pub fn n_trees(&self) -> usize {
        self.trees.len()
    }

    /// Number of input features.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Number of classes (columns of the probabilities).
    pub fn n_classes(&self) -> usize {
        self.n_classes
    }

    /// The hyper-parameters it was fitted with.
    pub fn params(&self) -> &ForestParams {
        &self.params
    }
}

struct Builder<'a> {
    x: &'a [Vec<f64>],
    y: &'a [usize],
    w: &'a [f64],
    order: &'a [Vec<usize>],
    n_classes: usize,
    mtry: usize,
    params: &'a ForestParams,
}

struct Best {
    feature: usize,
    threshold: f64,
    impurity: f64,
}

/// Values closer than this count as equal (scikit-learn's `FEATURE_THRESHOLD`).
const FEATURE_THRESHOLD: f64 = 1e-7;

fn gini(counts: &[f64], total: f64) -> f64 {
    if total <= 0.0 {
        return 0.0;
    }
    1.0 - counts.iter().map(|c| (c / total).powi(2)).sum::<f64>()
}

impl Builder<'_> {
    fn build(&self, rng: &mut StdRng) -> Tree {
        let n = self.x.len();
        let in_bag: Vec<bool> = self.w.iter().map(|&w| w > 0.0).collect();
        let root: Vec<usize> = (0..n).filter(|&i| in_bag[i]).collect();
        let mut nodes = vec![Node::Leaf { proba: vec![] }];
        // (node slot, member rows, depth)
        let mut stack = vec![(0usize, root, 0usize)];
        let mut member = vec![false; n];
        while let Some((slot, rows, depth)) = stack.pop() {
            let mut counts = vec![0.0; self.n_classes];
            for &i in &rows {
                counts[self.y[i]] += self.w[i];
            }
            let total: f64 = counts.iter().sum();
            let pure = counts.iter().filter(|&&c| c > 0.0).count() <= 1;
            let depth_ok = self.params.max_depth.is_none_or(|d| depth < d);
            let split = if !pure && depth_ok && rows.len() >= self.params.min_samples_split {
                for &i in &rows {
                    member[i] = true;
                }
                let best = self.best_split(&rows, &member, &counts, total, rng);
                for &i in &rows {
                    member[i] = false;
                }
                best
            } else {
                None
            };
            match split {
                Some(best) => {
                    let (l, r): (Vec<usize>, Vec<usize>) = rows
                        .iter()
                        .partition(|&&i| self.x[i][best.feature] <= best.threshold);
                    let (li, ri) = (nodes.len(), nodes.len() + 1);
                    nodes.push(Node::Leaf { proba: vec![] });
                    nodes.push(Node::Leaf { proba: vec![] });
                    nodes[slot] = Node::Split {
                        feature: best.feature,
                        threshold: best.threshold,
                        left: li,
                        right: ri,
                    };
                    stack.push((ri, r, depth + 1));
                    stack.push((li, l, depth + 1));
                }
                None => {
                    let proba = if total > 0.0 {
                        counts.iter().map(|c| c / total).collect()
                    } else {
                        vec![1.0 / self.n_classes as f64; self.n_classes]
                    };
                    nodes[slot] = Node::Leaf { proba };
                }
            }
        }
        Tree { nodes }
    }

    /// The split of lowest weighted child impurity among up to `mtry` non-constant features
    /// drawn in random order; `None` when every feature is constant in the node.
    fn best_split(
        &self,
        rows: &[usize],
        member: &[bool],
        parent: &[f64],
        total: f64,
        rng: &mut StdRng,
    ) -> Option<Best> {
        let mut features: Vec<usize> = (0..self.order.len()).collect();
        features.shuffle(rng);
        let (mut visited, mut constant) = (0usize, 0usize);
        let mut best: Option<Best> = None;
        let mut sorted = Vec::with_capacity(rows.len());
        let mut right = vec![0.0; self.n_classes];
        for f in features {
            // scikit-learn's rule: visit `mtry` features, more while every visited one was
            // constant in the node.
            if visited >= self.mtry && visited > constant {
                break;
            }
            visited += 1;
            sorted.clear();
            sorted.extend(self.order[f].iter().copied().filter(|&i| member[i]));
            let first = self.x[sorted[0]][f];
            let last = self.x[sorted[sorted.len() - 1]][f];
            if last <= first + FEATURE_THRESHOLD {
                constant += 1;
                continue;
            }
            let mut left = vec![0.0; self.n_classes];
            let mut wl = 0.0;
            for k in 0..sorted.len() - 1 {
                let i = sorted[k];
                left[self.y[i]] += self.w[i];
                wl += self.w[i];
                let (v, next) = (self.x[i][f], self.x[sorted[k + 1]][f]);
                if next <= v + FEATURE_THRESHOLD {
                    continue;
                }
                for ((r, p), l) in right.iter_mut().zip(parent).zip(&left) {
                    *r = p - l;
                }
                let wr = total - wl;
                let impurity = (wl * gini(&left, wl) + wr * gini(&right, wr)) / total;
                if best.as_ref().is_none_or(|b| impurity < b.impurity) {
                    let mut threshold = v / 2.0 + next / 2.0;
                    if threshold >= next || !threshold.is_finite() {
                        threshold = v;
                    }
                    best = Some(Best {
                        feature: f,
                        threshold,
                        impurity,
                    });
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xor_like(n: usize, seed: u64) -> (Vec<Vec<f64>>, Vec<usize>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for _ in 0..n {
            let a: f64 = rng.random_range(-1.0..1.0);
            let b: f64 = rng.random_range(-1.0..1.0);
            let noise: f64 = rng.random_range(-1.0..1.0);
            x.push(vec![a, b, noise]);
            y.push(usize::from(a * b > 0.0));
        }
        (x, y)
    }

    #[test]
    fn learns_xor_and_reports_oob() {
        let (x, y) = xor_like(300, 1);
        let params = ForestParams {
            n_trees: 30,
            oob_score: true,
            class_weight: ClassWeight::BalancedSubsample,
            ..ForestParams::default()
        };
        let forest = Forest::fit(&x, &y, 2, &params).unwrap();
        let (xt, yt) = xor_like(200, 2);
        let proba = forest.predict_proba(&xt).unwrap();
        let acc = proba
            .iter()
            .zip(&yt)
            .filter(|(p, t)| kiln::metrics::argmax(p) == **t)
            .count() as f64
            / yt.len() as f64;
        assert!(acc > 0.85, "accuracy {acc}");
        for p in &proba {
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        }
        let oob = forest.oob_score(&y).unwrap();
        assert!(oob > 0.8, "oob {oob}");
        // Deterministic for a seed.
        let again = Forest::fit(&x, &y, 2, &params).unwrap();
        assert_eq!(again.predict_proba(&xt).unwrap(), proba);
    }

    #[test]
    fn balanced_weights() {
        let w = balanced(&[0, 0, 0, 1], &[1.0, 1.0, 1.0, 1.0], 3);
        assert_eq!(w, vec![4.0 / 6.0, 2.0, 0.0]);
        // Bootstrap counts weigh in.
        let w = balanced(&[0, 1], &[3.0, 1.0], 2);
        assert_eq!(w, vec![4.0 / 6.0, 2.0]);
    }

    #[test]
    fn depth_limit_and_constant_features() {
        let (x, y) = xor_like(100, 3);
        let stump = ForestParams {
            n_trees: 1,
            max_depth: Some(1),
            max_features: MaxFeatures::All,
            bootstrap: false,
            ..ForestParams::default()
        };
        let forest = Forest::fit(&x, &y, 2, &stump).unwrap();
        assert!(forest.trees[0].nodes.len() <= 3);
        // A constant input gives a single leaf with the class frequencies.
        let xc = vec![vec![1.0]; 4];
        let forest = Forest::fit(&xc, &[0, 0, 0, 1], 2, &stump).unwrap();
        assert_eq!(forest.predict_proba(&xc).unwrap()[0], vec![0.75, 0.25]);
    }
}
