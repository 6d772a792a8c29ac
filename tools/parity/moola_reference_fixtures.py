#!/usr/bin/env python3
"""Parity fixtures for moola's CNN-Transformer and RWKV-TS classifiers (and the classifier
losses), computed by the reference's OWN code (crates/moola/src/model, crates/moola/src/loss.rs,
crates/moola/src/import.rs; test crates/moola/tests/reference_parity.rs).

Unlike ``moola_fixtures.py`` (which re-implements the networks), this script imports the model
classes and losses from a checkout of github.com/HeinekenBottle/moola and runs them unchanged:

* ``moola.models.cnn_transformer``: ``CnnTransformerModel`` (its ``fit``, ``save``, ``load``,
  ``predict_proba``, ``predict_with_pointers``; the network is the ``CnnTransformerNet`` its
  ``_build_model`` defines), and the losses that module uses: ``FocalLoss``,
  ``compute_multitask_loss`` and ``mixup_criterion``;
* ``moola.models.rwkv_ts``: ``RWKVTSModel`` (same methods; network ``RWKVTSNet`` with
  ``RWKVBlock``).

SimpleLSTM is NOT covered: the Rust port follows the reference's SimpleLSTM of the pre-squash
commit 7c9b1bb (unidirectional LSTM → attention → LayerNorm → last step → MLP), which is not in
the repository's public history; at 6ecdb28 ``models/simple_lstm.py`` holds a different,
dual-input network (bidirectional ``ohlc_encoder``, ``temporal_projection``, ...) and does not
import (``moola.utils.data_validation`` is missing). Its parity fixtures stay those of
``moola_fixtures.py``.

Regenerate (the commit the Rust port follows, 6ecdb28):

    git --git-dir <moola mirror> archive 6ecdb28c78d6b91c94deabaf621c0c4ea4425e78 \\
        | tar -x -C /tmp/moola_ref
    /work/venv/bin/python tools/parity/moola_reference_fixtures.py --reference /tmp/moola_ref

Stubbed with ``sys.modules`` (everything else is the reference's code, imported unchanged from
``<reference>/src``), as in ``moola_pretrain_fixtures.py``:

* ``loguru``: not installed here (``moola.utils.augmentation``, which both model modules import,
  imports ``financial_augmentation``, which logs through it); a no-op ``logger``.
* the ``moola.models`` package ``__init__``: its model registry fails to import at this commit;
  ``moola.models`` is registered as a bare package whose ``__path__`` is the real
  ``src/moola/models`` directory.

Procedure, per model:

1. The reference model object is built at reduced width and ``fit`` for ONE epoch on CPU on a
   tiny NumPy training set (OHLC-like random walks, string labels; for the pointer model also
   absolute ``expansion_start`` / ``expansion_end`` in [30, 74]): the reference's own label maps
   (``np.unique`` of a ``<U`` array: ``np.str_`` labels), counts and network construction.
2. Its fitted network (``model.model``) gets seeded perturbations so that no parameter is
   trivially 0 or 1 (``moola_fixtures.perturb``: LayerNorm / BatchNorm affine parameters,
   BatchNorm running statistics, attention in/out biases), a classifier weight scaled by 3 (so
   that the probabilities depend visibly on the input) and, for the pointer model, pointer-head
   weights scaled by 4 with random biases (so that the start/end logits vary along the window).
3. The reference's ``save(path)`` writes the checkpoint (``<name>.pt``): its own dict
   (``model_state_dict``, ``label_to_idx``, ``idx_to_label``, ``n_classes``, ``input_dim``,
   ``hyperparams`` [, ``predict_pointers``]) with the NumPy label objects in the pickle.
4. A fresh reference model object ``load``s that file, and its ``predict_proba`` /
   ``predict_with_pointers`` (float32, eval mode) are checked against the expected values below
   (within 1e-4), and equal to the fitted object's; its ``predict`` labels (and pointer
   ``start_predictions`` / ``end_predictions``) are recorded as ``reference_predictions``. Since
   PyTorch 2.6, ``torch.load`` defaults to ``weights_only=True`` and rejects the NumPy label
   scalars the reference's own ``save`` pickles, so its ``load`` runs under
   ``torch.serialization.safe_globals`` allowing exactly those (NumPy ``scalar`` and the ``<U``
   dtype).
5. Expected values: the reference network (``copy.deepcopy(model.model).double().eval()``, the
   float64 copy of the saved float32 weights) on the float32 input [4, 105, 4] in float64:
   ``logits`` [4, C] (and ``start_logits`` / ``end_logits`` [4, 45]), their softmax / sigmoid
   ``probs`` (/ ``start_probs`` / ``end_probs``), and the reference's losses on the float64
   logits with fixed targets. RWKV also records, per block, ``block_heads`` = its output's
   first 3 steps [L, 4, 3, d], where the state threaded from the previous block enters, and
   ``block_states`` = the state it returns [L, 4, d], and ``mean_readout_logits`` [4, C] = the
   reference's ``output_norm`` → ``classifier`` on the mean over all steps of the last block's
   output (moola's optional mean readout): the classifier reads only the last step, which the
   threaded state never reaches. Losses:

   * ``focal``: ``FocalLoss(gamma=2.0, alpha=None)`` (what ``fit`` uses);
   * ``focal_alpha``: ``FocalLoss(gamma=2.0, alpha=<per-class weights>)`` (RWKV fixture);
   * ``mixup.focal``: ``mixup_criterion(FocalLoss(2.0), logits, y_a, y_b, lam)``;
   * ``multitask`` (pointer model): ``compute_multitask_loss(outputs, targets, alpha, beta)``
     for the defaults (0.5, 0.25) and a progressive-schedule point (1.0, 0.06), each with its
     ``class`` / ``start`` / ``end`` parts.

   ``f32_max_abs_diff`` records PyTorch's own float32 deviation from them. One adjustment for
   the float64 run only: the CNN-Transformer builds its additive attention mask in float32
   whatever the network's dtype, and PyTorch's attention silently mis-computes a float64 query
   with a float32 mask (up to 6e-2 on the attention output at head width 2); a forward pre-hook
   on ``transformer`` hands it the same mask (0 / -inf, exact in both) in float64. The float32
   run (the reference's real dtype) is unaffected and agrees with the float64 values within
   ~1e-6.

Outputs in ``crates/moola/tests/fixtures/reference/`` (``<name>.pt`` + ``<name>.json``):

* ``cnn_transformer_ptr``: ``CnnTransformerModel(cnn_channels=[6, 8, 8], cnn_kernels=[3, 5, 9],
  transformer_layers=2, transformer_heads=2, dropout=0.3, predict_pointers=True)``, 2 classes
  (its losses include ``multitask``).
* ``cnn_transformer_3c``: ``CnnTransformerModel(cnn_channels=[5, 6], cnn_kernels=[3, 7],
  transformer_layers=1, transformer_heads=3, dropout=0.15)``, 3 classes, no pointer heads.
* ``rwkv_ts``: ``RWKVTSModel(d_model=8, n_layers=2, dropout=0.35, patch_sizes=[5, 9, 13])``,
  3 classes (``window_mask`` buffers); its losses include ``focal_alpha``.
* ``rwkv_ts_plain``: ``RWKVTSModel(d_model=8, n_layers=1, dropout=0.1, patch_sizes=[7, 15],
  instance_norm=False)``, 2 classes.

Dropout rates and patch sizes are not the reference defaults, so that the saved hyper-parameters
visibly reach moola's config (neither changes the eval-mode outputs).

Each JSON also holds ``reference_commit``, ``model``, the ``hyperparams`` / ``predict_pointers``
/ ``n_classes`` / ``input_dim`` / ``classes`` (in index order) the reference saved and the Python
types of its labels (``label_types``), ``state_dict_keys`` (key and shape, in order) and
``input`` (4-decimal values, exact as float32 after a float64 parse).

The script is deterministic (seeded data, fit, perturbations; one CPU thread): rerunning it at
the same commit with the same PyTorch writes identical files.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import io
import json
import pathlib
import sys
import types

import numpy as np
import torch

# The same weight perturbation as the other classifier fixtures (this directory is on sys.path
# when the script runs).
from moola_fixtures import perturb
from moola_reference import stub_reference

DEFAULT_COMMIT = "6ecdb28c78d6b91c94deabaf621c0c4ea4425e78"
WINDOW = 105
INNER = (30, 75)
BATCH = 4
LABELS = np.array(["consolidation", "retracement", "reversal"])
# RWKV: how many leading steps of each block's output the fixtures record.
RWKV_HEAD_STEPS = 3
# What a pickled ``np.str_`` label refers to (``np.unique`` of a ``<U`` array).
NUMPY_LABEL_GLOBALS = [np._core.multiarray.scalar, np.dtype, type(np.dtype("<U13"))]


def import_reference(reference: pathlib.Path) -> types.SimpleNamespace:
    """Imports the reference's modules from ``<reference>/src`` with the stubs of the docstring."""
    stub_reference(reference, "moola/models/cnn_transformer.py")

    cnn = importlib.import_module("moola.models.cnn_transformer")
    rwkv = importlib.import_module("moola.models.rwkv_ts")
    return types.SimpleNamespace(
        CnnTransformerModel=cnn.CnnTransformerModel,
        RWKVTSModel=rwkv.RWKVTSModel,
        # The losses exactly as the model modules import them.
        FocalLoss=cnn.FocalLoss,
        compute_multitask_loss=cnn.compute_multitask_loss,
        mixup_criterion=cnn.mixup_criterion,
    )


def ohlc_windows(rng: np.random.Generator, batch: int) -> np.ndarray:
    """OHLC-like random walks [B, 105, 4] around a per-window level in [-2, 2], rounded to four
    decimals (float32)."""
    out = np.empty((batch, WINDOW, 4), dtype=np.float64)
    for b in range(batch):
        level = rng.uniform(-2.0, 2.0)
        close = level + np.cumsum(rng.normal(0.0, 0.15, WINDOW))
        open_ = np.concatenate([[level], close[:-1]])
        high = np.maximum(open_, close) + np.abs(rng.normal(0.0, 0.08, WINDOW))
        low = np.minimum(open_, close) - np.abs(rng.normal(0.0, 0.08, WINDOW))
        out[b] = np.stack([open_, high, low, close], axis=1)
    return np.round(out, 4).astype(np.float32)


def training_set(rng: np.random.Generator, n_per_class: int, n_classes: int):
    """A tiny training set for one epoch of the reference's ``fit``."""
    x = ohlc_windows(rng, n_per_class * n_classes)
    y = np.repeat(LABELS[:n_classes], n_per_class)
    order = rng.permutation(len(y))
    starts = rng.integers(INNER[0], INNER[1] - 10, len(y))
    ends = starts + rng.integers(1, 10, len(y))
    return x[order], y[order], starts[order], ends[order]


def as_list(t) -> list:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    return np.asarray(t).tolist()


def key_list(state: dict) -> list:
    return [[k, list(v.shape)] for k, v in state.items()]


def quiet(fn, *args, **kwargs):
    """Runs ``fn`` with its prints (the reference's training log) captured."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def network_outputs(net: torch.nn.Module, x: np.ndarray, dtype: torch.dtype) -> dict:
    """The reference network's eval-mode outputs on ``x`` in ``dtype``."""
    m = copy.deepcopy(net).to(dtype).eval()
    if hasattr(m, "transformer"):
        # The CNN-Transformer builds its additive attention mask in float32 whatever the
        # network's dtype; PyTorch's attention silently mis-computes a float64 query with a
        # float32 mask (it is exact for float32, the reference's real dtype). The mask's values
        # (0 and -inf) are exact in float64, so it is handed to the encoder in the input's dtype.
        def mask_in_input_dtype(module, args, kwargs):
            if kwargs.get("mask") is not None:
                kwargs["mask"] = kwargs["mask"].to(args[0].dtype)
            return args, kwargs

        m.transformer.register_forward_pre_hook(mask_in_input_dtype, with_kwargs=True)
    blocks = []
    if hasattr(m, "blocks"):
        # RWKV: each block's output and the state it returns.
        for block in m.blocks:
            block.register_forward_hook(lambda module, args, out: blocks.append(out))
    with torch.no_grad():
        y = quiet(m, torch.from_numpy(x).to(dtype))
        if isinstance(y, dict):
            return {"logits": y["classification"], "start_logits": y["start"], "end_logits": y["end"]}
        if not blocks:
            return {"logits": y}
        # The classifier reads only the last step, which the state threaded from block to block
        # (it enters each block at step 0) never reaches. To make the threading observable: each
        # block's first output steps and returned state, and the reference head (output_norm,
        # classifier; dropout is off) on the mean over all steps of the last block's output
        # (moola's optional mean readout).
        last = blocks[-1][0]
        return {
            "logits": y,
            "block_heads": torch.stack([out[:, :RWKV_HEAD_STEPS, :] for out, _ in blocks]),
            "block_states": torch.stack([state[:, 0, :] for _, state in blocks]),
            "mean_readout_logits": m.classifier(m.dropout(m.output_norm(last.mean(dim=1)))),
        }


def check_reference_api(ref_cls, path: pathlib.Path, x: np.ndarray, expected: dict, fitted) -> dict:
    """Loads ``path`` with the reference's own ``load`` and checks its float32 predictions against
    the float64 expectation (and the fitted object's). Returns the loaded object's metadata."""
    loaded = ref_cls(device="cpu")
    # The reference's ``load`` calls ``torch.load(path, map_location=...)``, which since PyTorch
    # 2.6 defaults to ``weights_only=True`` and rejects the NumPy label scalars its own ``save``
    # pickles; allow-list exactly those (the reference code runs unchanged).
    with torch.serialization.safe_globals(NUMPY_LABEL_GLOBALS):
        quiet(loaded.load, path)
    proba = loaded.predict_proba(x)
    assert np.array_equal(proba, fitted.predict_proba(x)), "load() changed the predictions"
    assert np.abs(proba - expected["probs"]).max() < 1e-4, (proba, expected["probs"])
    if getattr(loaded, "predict_pointers", False):
        out = quiet(loaded.predict_with_pointers, x)
        for ours, theirs in (("start_probs", "start_probabilities"), ("end_probs", "end_probabilities")):
            assert np.abs(out[theirs] - expected[ours]).max() < 1e-4, ours
        assert np.abs(out["probabilities"] - expected["probs"]).max() < 1e-4
    predictions = {"predicted_labels": [str(label) for label in loaded.predict(x)]}
    if getattr(loaded, "predict_pointers", False):
        predictions["start_predictions"] = out["start_predictions"].tolist()
        predictions["end_predictions"] = out["end_predictions"].tolist()
    return {
        "predictions": predictions,
        "classes": [str(loaded.idx_to_label[i]) for i in range(loaded.n_classes)],
        "label_types": sorted({type(k).__module__ + "." + type(k).__name__ for k in loaded.label_to_idx}),
    }


def focal_losses(ref, logits: torch.Tensor, n_classes: int, alpha=None) -> dict:
    """The reference's focal loss (and its mixup criterion) on ``logits`` (float64)."""
    # Fixed targets that hit every class; y_b is a permutation of them (mixup's y[perm]).
    targets = np.array([1, 0, n_classes - 1, 0])
    y_b = targets[[2, 0, 3, 1]]
    lam = 0.37
    y = torch.from_numpy(targets)
    yb = torch.from_numpy(y_b)
    crit = ref.FocalLoss(gamma=2.0, alpha=None, reduction="mean")
    out = {
        "targets": targets.tolist(),
        "focal": float(crit(logits, y)),
        "mixup": {"y_b": y_b.tolist(), "lam": lam, "focal": float(ref.mixup_criterion(crit, logits, y, yb, lam))},
    }
    if alpha is not None:
        a = torch.tensor(alpha, dtype=torch.float64)
        out["alpha"] = list(alpha)
        out["focal_alpha"] = float(ref.FocalLoss(gamma=2.0, alpha=a, reduction="mean")(logits, y))
    return out


def multitask_losses(ref, outputs: dict) -> dict:
    """The reference's ``compute_multitask_loss`` on the pointer model's float64 logits, with
    fixed targets (both classes; pointers at both ends of the window and inside it)."""
    targets = {
        "class": torch.tensor([0, 1, 1, 0]),
        "start_idx": torch.tensor([0, 7, 22, 40]),
        "end_idx": torch.tensor([44, 30, 23, 41]),
    }
    preds = {"classification": outputs["logits"], "start": outputs["start_logits"], "end": outputs["end_logits"]}
    cases = []
    for alpha, beta in ((0.5, 0.25), (1.0, 0.06)):
        # ``device`` is where the one-hot targets are built (float32 zeros, promoted in BCE).
        total, parts = ref.compute_multitask_loss(preds, targets, alpha=alpha, beta=beta, device="cpu")
        cases.append({
            "alpha": alpha,
            "beta": beta,
            "total": float(total),
            "class": parts["class"],
            "start": parts["start"],
            "end": parts["end"],
        })
    return {
        "class_targets": as_list(targets["class"]),
        "start_targets": as_list(targets["start_idx"]),
        "end_targets": as_list(targets["end_idx"]),
        "cases": cases,
    }


def write_case(ref, ref_cls, out: pathlib.Path, name: str, model, x: np.ndarray, commit: str,
               alpha=None) -> None:
    path = out / f"{name}.pt"
    model.save(path)  # the reference's own save dict
    ckpt = torch.load(path, weights_only=False)
    state = ckpt["model_state_dict"]
    assert all(v.dtype == torch.float32 for k, v in state.items() if not k.endswith("num_batches_tracked"))

    f64 = network_outputs(model.model, x, torch.float64)
    f32 = network_outputs(model.model, x, torch.float32)
    diff = max(float((f64[k] - f32[k].double()).abs().max()) for k in f64)
    expected = {"probs": torch.softmax(f64["logits"], dim=1).numpy()}
    if "start_logits" in f64:
        expected["start_probs"] = torch.sigmoid(f64["start_logits"]).numpy()
        expected["end_probs"] = torch.sigmoid(f64["end_logits"]).numpy()
    assert expected["probs"].max() < 0.995, f"{name}: saturated probabilities"
    meta = check_reference_api(ref_cls, path, x, expected, model)

    n_classes = int(ckpt["n_classes"])
    doc = {
        "reference_commit": commit,
        "model": "cnn_transformer" if "cnn_channels" in ckpt["hyperparams"] else "rwkv_ts",
        "hyperparams": ckpt["hyperparams"],
        "predict_pointers": ckpt.get("predict_pointers"),
        "n_classes": n_classes,
        "input_dim": int(ckpt["input_dim"]),
        "classes": meta["classes"],
        "label_types": meta["label_types"],
        "state_dict_keys": key_list(state),
        "input": np.round(x.astype(np.float64), 4).tolist(),
        **{k: as_list(v) for k, v in f64.items()},
        **{k: as_list(v) for k, v in expected.items()},
        "reference_predictions": meta["predictions"],
        "losses": focal_losses(ref, f64["logits"], n_classes, alpha),
        "f32_max_abs_diff": diff,
    }
    if "start_logits" in f64:
        doc["losses"]["multitask"] = multitask_losses(ref, f64)
    # The input text must parse back to exactly the float32 values the outputs were computed on.
    assert np.array_equal(np.array(doc["input"], dtype=np.float64).astype(np.float32), x)
    (out / f"{name}.json").write_text(json.dumps(doc) + "\n")
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1024:.1f} KiB" for p in (path, out / f"{name}.json"))
    print(f"{name}: {sizes}; max prob {expected['probs'].max():.3f}; torch f32 vs f64 {diff:.2e}")


def cnn_transformer(ref, out, commit, gen, rng, name, n_classes, pointers, **hp) -> None:
    model = ref.CnnTransformerModel(
        seed=1337, n_epochs=1, batch_size=8, device="cpu", predict_pointers=pointers, **hp
    )
    x_tr, y_tr, starts, ends = training_set(rng, 8, n_classes)
    if pointers:
        quiet(model.fit, x_tr, y_tr, expansion_start=starts, expansion_end=ends)
    else:
        quiet(model.fit, x_tr, y_tr)
    perturb(model.model, gen)
    with torch.no_grad():
        model.model.classifier.weight.mul_(3.0)
        if pointers:
            for head in (model.model.pointer_start_head, model.model.pointer_end_head):
                head.weight.mul_(4.0)
                head.bias.copy_(0.3 * torch.randn(1, generator=gen))
    write_case(ref, ref.CnnTransformerModel, out, name, model, ohlc_windows(rng, BATCH), commit)


def rwkv_ts(ref, out, commit, gen, rng, name, n_classes, alpha=None, **hp) -> None:
    model = ref.RWKVTSModel(seed=1337, n_epochs=1, batch_size=8, device="cpu", **hp)
    x_tr, y_tr, _, _ = training_set(rng, 8, n_classes)
    quiet(model.fit, x_tr, y_tr)
    perturb(model.model, gen)
    with torch.no_grad():
        model.model.classifier.weight.mul_(3.0)
    write_case(ref, ref.RWKVTSModel, out, name, model, ohlc_windows(rng, BATCH), commit, alpha=alpha)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = pathlib.Path(__file__).resolve().parents[2]
    parser.add_argument("--reference", type=pathlib.Path, required=True,
                        help="a checkout (or `git archive` export) of HeinekenBottle/moola at 6ecdb28")
    parser.add_argument("--commit", default=DEFAULT_COMMIT, help="the reference commit, recorded in the JSON")
    parser.add_argument("--out", type=pathlib.Path, default=root / "crates/moola/tests/fixtures/reference")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ref = import_reference(args.reference.resolve())
    torch.set_num_threads(1)  # deterministic CPU training and reductions
    gen = torch.Generator().manual_seed(23)
    rng = np.random.default_rng(6028)
    # Dropout rates (and RWKV's unused patch sizes) differ from the reference defaults so that
    # the checkpoint's hyper-parameters visibly reach moola's config.
    cnn_transformer(ref, args.out, args.commit, gen, rng, "cnn_transformer_ptr", 2, True,
                    cnn_channels=[6, 8, 8], cnn_kernels=[3, 5, 9], transformer_layers=2, transformer_heads=2,
                    dropout=0.3)
    cnn_transformer(ref, args.out, args.commit, gen, rng, "cnn_transformer_3c", 3, False,
                    cnn_channels=[5, 6], cnn_kernels=[3, 7], transformer_layers=1, transformer_heads=3,
                    dropout=0.15)
    rwkv_ts(ref, args.out, args.commit, gen, rng, "rwkv_ts", 3, alpha=[0.6, 1.5, 2.25],
            d_model=8, n_layers=2, dropout=0.35, patch_sizes=[5, 9, 13])
    rwkv_ts(ref, args.out, args.commit, gen, rng, "rwkv_ts_plain", 2,
            d_model=8, n_layers=1, dropout=0.1, patch_sizes=[7, 15], instance_norm=False)


if __name__ == "__main__":
    main()
