"""Re-ranking fixtures from a published implementation: torchreid's `re_ranking`
(`torchreid/reid/utils/rerank.py`, the k-reciprocal re-ranking of Zhong et al., CVPR 2017, as
released by the paper's authors with float16 replaced by float32).

Writes `crates/reid/tests/fixtures/rerank/rerank.json`: random distance matrices (squared
Euclidean or cosine distances of random features, float32) and what `re_ranking` returns for
them, for `crates/reid/tests/rerank.rs` (agreement within 1e-5).

torchreid's package imports PyTorch at the top level, so the script loads only `rerank.py` (it
imports nothing but NumPy) from the torchreid 0.2.5 source distribution on PyPI. Setup, outside
the repository:

    python3 -m venv /tmp/venv-reid && /tmp/venv-reid/bin/pip install numpy
    /tmp/venv-reid/bin/pip download --no-deps -d /tmp/pipdl torchreid==0.2.5
    tar xzf /tmp/pipdl/torchreid-0.2.5.tar.gz -C /tmp/pipdl
    /tmp/venv-reid/bin/python tools/parity/reid_rerank_fixtures.py \
        --rerank-py /tmp/pipdl/torchreid-0.2.5/torchreid/reid/utils/rerank.py
"""

import argparse
import importlib.util
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "crates", "reid", "tests", "fixtures", "rerank", "rerank.json")


def load_re_ranking(path):
    spec = importlib.util.spec_from_file_location("torchreid_rerank", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.re_ranking


def distances(a, b, metric):
    a = a.astype(np.float32)
    b = b.astype(np.float32)
    if metric == "cosine":
        an = a / np.linalg.norm(a, axis=1, keepdims=True)
        bn = b / np.linalg.norm(b, axis=1, keepdims=True)
        return np.abs(1.0 - an @ bn.T).astype(np.float32)
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0).astype(np.float32)


CASES = [
    # name, queries, gallery, dim, clusters, metric, k1, k2, lambda
    ("defaults", 6, 40, 16, 8, "euclidean", 20, 6, 0.3),
    ("odd_half_k1", 4, 14, 8, 4, "cosine", 5, 3, 0.5),
    ("no_local_expansion", 3, 25, 8, 5, "euclidean", 20, 1, 0.0),
    ("one_query", 1, 60, 32, 10, "cosine", 20, 6, 0.3),
    ("original_only", 3, 12, 4, 3, "euclidean", 4, 2, 1.0),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rerank-py", required=True, help="torchreid's rerank.py")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    re_ranking = load_re_ranking(args.rerank_py)
    rng = np.random.default_rng(20170721)
    cases = []
    for name, nq, ng, dim, clusters, metric, k1, k2, lam in CASES:
        centres = rng.normal(size=(clusters, dim))
        q = centres[rng.integers(0, clusters, nq)] + 0.5 * rng.normal(size=(nq, dim))
        g = centres[rng.integers(0, clusters, ng)] + 0.5 * rng.normal(size=(ng, dim))
        q_g, q_q, g_g = distances(q, g, metric), distances(q, q, metric), distances(g, g, metric)
        out = re_ranking(q_g.copy(), q_q.copy(), g_g.copy(), k1=k1, k2=k2, lambda_value=lam)
        cases.append({
            "name": name, "num_query": nq, "num_gallery": ng, "metric": metric,
            "k1": k1, "k2": k2, "lambda": lam,
            "q_g": q_g.ravel().tolist(), "q_q": q_q.ravel().tolist(), "g_g": g_g.ravel().tolist(),
            "expected": np.asarray(out, dtype=np.float64).ravel().tolist(),
        })
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({
            "source": "torchreid 0.2.5 torchreid/reid/utils/rerank.py re_ranking (PyPI sdist)",
            "generator": "tools/parity/reid_rerank_fixtures.py",
            "cases": cases,
        }, f)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {args.out}")


if __name__ == "__main__":
    main()
