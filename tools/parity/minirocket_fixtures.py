"""MiniRocket and RidgeClassifierCV parity fixtures for `crates/moola/tests/minirocket.rs`.

Runs aeon's `MiniRocket` transform (the authors' algorithm, as aeon ships it) and scikit-learn's
`StandardScaler(with_mean=False)` + `RidgeClassifierCV(alphas=np.logspace(-3, 3, 10))` (aeon's
`MiniRocketClassifier` pipeline) on small seeded inputs and writes what the Rust port must
reproduce:

* `dilations`: `_fit_dilations` for several (length, features, max dilations) and `_quantiles`;
* `univariate` / `multivariate`: a transform fitted on ONE window (so that every bias comes from
  that window, whatever the random draw), its parameters (dilations, features per dilation,
  channel combinations, biases) and the features of other windows;
* `ridge_binary` / `ridge_multiclass`: MiniRocket features of a small labelled set (train and
  test), the scaler's `scale_`, the ridge's `alpha_`, `best_score_`, `coef_`, `intercept_`, and
  its `decision_function` / `predict` on the test features (scikit-learn fitted on the float32
  features cast to float64).

Usage (outside the repository's build; nothing in CI needs Python):

    python3 -m venv /tmp/venv-rocket
    /tmp/venv-rocket/bin/pip install aeon==1.6.0 scikit-learn==1.9.1
    /tmp/venv-rocket/bin/python tools/parity/minirocket_fixtures.py
    cargo test -p moola --test minirocket

Deterministic: seeded inputs and `random_state`; rerunning writes the same file.
"""

import json
import os

import numpy as np
from aeon.transformations.collection.convolution_based import MiniRocket
from aeon.transformations.collection.convolution_based._minirocket import (
    _fit_dilations,
    _quantiles,
)
from sklearn.linear_model import RidgeClassifierCV
from sklearn.preprocessing import StandardScaler

OUT = os.path.join(
    os.path.dirname(__file__), "..", "..", "crates", "moola", "tests", "fixtures", "minirocket"
)


def f32(a):
    """float32 values as their shortest round-trip decimals (read them back as f32)."""
    a = np.asarray(a, dtype=np.float32)
    return [float(np.format_float_positional(v, unique=True)) for v in a.ravel()]


def nested(a):
    a = np.asarray(a, dtype=np.float32)
    return np.array(f32(a), dtype=np.float64).reshape(a.shape).tolist()


def params_json(p):
    per_combo, channels, dilations, per_dilation, biases = p
    return {
        "channels_per_combination": [int(v) for v in per_combo],
        "channel_indices": [int(v) for v in channels],
        "dilations": [int(v) for v in dilations],
        "features_per_dilation": [int(v) for v in per_dilation],
        "biases": f32(biases),
    }


def transform_case(rng, n_channels, length, n_kernels, n_windows):
    x_fit = rng.standard_normal((1, n_channels, length)).astype(np.float32)
    x = rng.standard_normal((n_windows, n_channels, length)).astype(np.float32)
    mr = MiniRocket(n_kernels=n_kernels, random_state=0).fit(x_fit)
    features = mr.transform(x)
    return {
        "n_features_requested": n_kernels,
        "x_fit": nested(x_fit),
        "x": nested(x),
        "params": params_json(mr.parameters),
        "features": nested(features),
    }


def labelled(rng, n, n_classes, length):
    """Noisy sine waves whose frequency and phase depend on the class."""
    y = np.arange(n) % n_classes
    t = np.arange(length)
    x = np.stack(
        [np.sin(2 * np.pi * (1 + c) * t / length + 0.3 * c) for c in y]
    ) + 0.8 * rng.standard_normal((n, length))
    return x[:, None, :].astype(np.float32), y


def ridge_case(rng, n_classes):
    length, n_train, n_test = 40, 30, 10
    x_train, y_train = labelled(rng, n_train, n_classes, length)
    x_test, y_test = labelled(rng, n_test, n_classes, length)
    mr = MiniRocket(n_kernels=168, random_state=1).fit(x_train)
    f_train = np.asarray(mr.transform(x_train), dtype=np.float32)
    f_test = np.asarray(mr.transform(x_test), dtype=np.float32)
    scaler = StandardScaler(with_mean=False).fit(f_train.astype(np.float64))
    s_train = scaler.transform(f_train.astype(np.float64))
    s_test = scaler.transform(f_test.astype(np.float64))
    ridge = RidgeClassifierCV(alphas=np.logspace(-3, 3, 10)).fit(s_train, y_train)
    coef = np.atleast_2d(ridge.coef_)
    return {
        "features_train": nested(f_train),
        "y_train": y_train.tolist(),
        "features_test": nested(f_test),
        "y_test": y_test.tolist(),
        "scale": scaler.scale_.tolist(),
        "alpha": float(ridge.alpha_),
        "best_score": float(ridge.best_score_),
        "coef": coef.tolist(),
        "intercept": np.atleast_1d(ridge.intercept_).tolist(),
        "decision_test": np.atleast_2d(ridge.decision_function(s_test).T).T.tolist()
        if n_classes > 2
        else [[v] for v in ridge.decision_function(s_test).tolist()],
        "predict_test": ridge.predict(s_test).tolist(),
    }


def main():
    rng = np.random.default_rng(20210814)
    out = {
        "source": "aeon 1.6.0 MiniRocket; scikit-learn 1.9.1 StandardScaler + RidgeClassifierCV",
        "dilations": [],
        "quantiles": f32(_quantiles(20)),
    }
    for length, n_features, max_d in [
        (9, 10_000, 32),
        (24, 10_000, 32),
        (30, 840, 32),
        (100, 10_000, 32),
        (105, 10_000, 32),
        (500, 10_000, 32),
        (1000, 2_000, 16),
        (50, 84, 32),
    ]:
        d, per = _fit_dilations(length, n_features, max_d)
        out["dilations"].append(
            {
                "seq_len": length,
                "n_features": n_features,
                "max_dilations_per_kernel": max_d,
                "dilations": [int(v) for v in d],
                "features_per_dilation": [int(v) for v in per],
            }
        )
    out["univariate"] = transform_case(rng, 1, 30, 840, 4)
    out["multivariate"] = transform_case(rng, 3, 20, 840, 3)
    out["ridge_binary"] = ridge_case(rng, 2)
    out["ridge_multiclass"] = ridge_case(rng, 3)
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "minirocket.json")
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    for case in ("ridge_binary", "ridge_multiclass"):
        print(case, "alpha", out[case]["alpha"], "best_score", out[case]["best_score"])


if __name__ == "__main__":
    main()
