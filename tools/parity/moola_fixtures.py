#!/usr/bin/env python3
"""PyTorch parity fixtures for moola's deep classifiers and the checkpoint importer
(crates/moola/src/model, crates/moola/src/import.rs, test crates/moola/tests/import.rs).

Run with the PyTorch virtualenv (outside the repository):

    /work/venv/bin/python tools/parity/moola_fixtures.py [--out crates/moola/tests/fixtures/parity]

The networks (``moola_nets.py``) are re-implemented in PyTorch from the upstream model files with the reference's module
names, so the state-dict keys are the reference's. Every model is small (reduced widths) and gets
random weights; BatchNorm running statistics, affine weights and all biases (including those
PyTorch initialises to zero: attention in/out biases, LayerNorm) are perturbed so that nothing is
trivially zero or one. Checkpoints use the reference's save dict (what each model's ``save``
writes):

    {model_state_dict, label_to_idx, idx_to_label, n_classes, input_dim, hyperparams
     [, predict_pointers]}

with plain ``str`` labels (what ``np.unique`` returns for the object-dtype label column the
reference's CLI reads) and ``int`` indices.

Outputs (``<name>.pt`` + ``<name>.json``):

* ``simple_lstm_1l``: SimpleLSTM, hidden 16, 1 layer, 4 heads, 2 classes.
* ``simple_lstm_2l``: SimpleLSTM, hidden 12, 2 layers, 3 heads, 3 classes.
* ``cnn_transformer_ptr``: CNN-Transformer, channels [8, 12, 12], kernels [3, 5, 9], 2 layers,
  4 heads, 2 classes, pointer heads.
* ``cnn_transformer_3c``: CNN-Transformer, channels [7, 8], kernels [3, 5], 1 layer, 2 heads,
  3 classes, no pointer heads (odd channel split, identity-free residuals).
* ``rwkv_ts``: RWKV-TS, d_model 16, 2 blocks, 3 classes, InstanceNorm, ``window_mask`` buffers.
* ``bilstm``: a bare ``nn.LSTM(4, 6, num_layers=2, bidirectional=True)`` state dict (keys
  ``weight_ih_l0``, ``weight_ih_l0_reverse``, ...), input [2, 12, 4], output [2, 12, 12] and the
  final ``h_n``/``c_n`` [4, 2, 6].
* ``broken_{missing,extra,shape}.pt``: ``simple_lstm_1l`` with ``ln.bias`` removed, an extra
  ``extra_head.weight``, and ``ln.weight`` of the wrong shape.
* ``simple_lstm_numpy_labels.pt``: ``simple_lstm_1l``'s weights and hyper-parameters with the
  metadata the reference's ``save`` writes after ``fit`` on NumPy arrays: labels from
  ``np.unique(np.array(['up', 'down']))`` (``np.str_`` keys of ``label_to_idx`` and values of
  ``idx_to_label``), ``n_classes``/``input_dim`` as ``np.int64``. Its probabilities are those of
  ``simple_lstm_1l.json`` (classes ``down``, ``up``).
* ``encoder_bilstm.pt``: an encoder checkpoint, ``{'encoder_state_dict': <bilstm.pt's state
  dict>, 'hyperparams': {'input_dim': np.int64(4), 'hidden_dim': 6, 'num_layers': 2,
  'dropout': np.float64(0.2)}}`` (outputs: ``bilstm.json``).
* ``encoder_tstcc.pt``: a TS-TCC encoder checkpoint as ``TSTCCPretrainer.save_encoder`` writes it,
  ``{'encoder_state_dict': <cnn_transformer_ptr's cnn_blocks.*, transformer.*, rel_pos_enc.*>,
  'hyperparams': {'cnn_channels': [8, 12, 12], 'cnn_kernels': [3, 5, 9]}}``.

The last three are built from the committed ``simple_lstm_1l.pt``, ``bilstm.pt`` and
``cnn_transformer_ptr.pt``, so
``--derived-only`` writes just them, leaving the other fixtures as they are.

Each JSON holds ``input`` [B, 105, 4] (OHLC-like random walks of moderate magnitude, float32),
the eval-mode softmax ``probs`` [B, C] and, with pointer heads, the sigmoid ``start_probs`` /
``end_probs`` [B, 45]. Expected values are computed in float64 from the saved float32 weights and
inputs; ``f32_max_abs_diff`` records how far PyTorch's own float32 forward is from them.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
import torch

from moola_nets import WINDOW, CnnTransformerNet, RWKVTSNet, SimpleLSTMNet

BATCH = 4
INPUT_DIM = 4


def ohlc_windows(rng: np.random.Generator, batch: int) -> np.ndarray:
    """OHLC-like random walks [B, 105, 4] around a per-window level in [-2, 2]."""
    out = np.empty((batch, WINDOW, 4), dtype=np.float32)
    for b in range(batch):
        level = rng.uniform(-2.0, 2.0)
        close = level + np.cumsum(rng.normal(0.0, 0.15, WINDOW))
        open_ = np.concatenate([[level], close[:-1]])
        high = np.maximum(open_, close) + np.abs(rng.normal(0.0, 0.08, WINDOW))
        low = np.minimum(open_, close) - np.abs(rng.normal(0.0, 0.08, WINDOW))
        out[b] = np.stack([open_, high, low, close], axis=1)
    return out


@torch.no_grad()
def perturb(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Randomises norms, biases and BatchNorm statistics so that none is trivially 0 or 1."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
            module.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            module.num_batches_tracked.fill_(7)
            module.weight.copy_(1.0 + 0.2 * torch.randn(n, generator=gen))
            module.bias.copy_(0.2 * torch.randn(n, generator=gen))
        elif isinstance(module, torch.nn.LayerNorm):
            n = module.normalized_shape[0]
            module.weight.copy_(1.0 + 0.2 * torch.randn(n, generator=gen))
            module.bias.copy_(0.2 * torch.randn(n, generator=gen))
        elif isinstance(module, torch.nn.MultiheadAttention):
            module.in_proj_bias.copy_(0.2 * torch.randn(module.in_proj_bias.shape, generator=gen))
            module.out_proj.bias.copy_(0.2 * torch.randn(module.out_proj.bias.shape, generator=gen))


@torch.no_grad()
def sharpen(layer: torch.nn.Linear, factor: float) -> None:
    """Scales an output layer so that the probabilities depend visibly on the input."""
    layer.weight.mul_(factor)


def labels_for(n_classes: int) -> list[str]:
    names = ["consolidation", "retracement", "reversal"]
    return sorted(names[:n_classes])


def save_checkpoint(path: pathlib.Path, model, n_classes, hyperparams, extra=None, state=None):
    labels = labels_for(n_classes)
    ckpt = {
        "model_state_dict": model.state_dict() if state is None else state,
        "label_to_idx": {label: i for i, label in enumerate(labels)},
        "idx_to_label": {i: label for i, label in enumerate(labels)},
        "n_classes": n_classes,
        "input_dim": INPUT_DIM,
        "hyperparams": hyperparams,
    }
    if extra:
        ckpt.update(extra)
    torch.save(ckpt, path)


def expected_outputs(model, x: np.ndarray) -> tuple[dict, float]:
    """Eval-mode probabilities in float64, and PyTorch float32's max deviation from them."""
    model.eval()
    out = {}
    results = {}
    for dtype in (torch.float64, torch.float32):
        m = model.to(dtype)
        with torch.no_grad():
            y = m(torch.from_numpy(x).to(dtype))
        if isinstance(y, dict):
            res = {
                "probs": torch.softmax(y["classification"], dim=-1),
                "start_probs": torch.sigmoid(y["start"]),
                "end_probs": torch.sigmoid(y["end"]),
            }
        else:
            res = {"probs": torch.softmax(y, dim=-1)}
        results[dtype] = {k: v.double().numpy() for k, v in res.items()}
    model.to(torch.float32)
    diff = max(
        float(np.abs(results[torch.float64][k] - results[torch.float32][k]).max())
        for k in results[torch.float64]
    )
    for k, v in results[torch.float64].items():
        out[k] = v.tolist()
    return out, diff


def write_case(out_dir: pathlib.Path, name: str, model, n_classes, hyperparams, x, extra=None, meta=None):
    save_checkpoint(out_dir / f"{name}.pt", model, n_classes, hyperparams, extra)
    expected, diff = expected_outputs(model, x)
    probs = np.array(expected["probs"])
    assert probs.max() < 0.995, f"{name}: saturated probabilities {probs.max()}"
    doc = {
        "model": meta["model"],
        "classes": labels_for(n_classes),
        "input": np.round(x.astype(np.float64), 6).astype(np.float32).tolist(),
        **expected,
        "f32_max_abs_diff": diff,
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    (out_dir / f"{name}.json").write_text(json.dumps(doc) + "\n")
    print(f"{name}: {doc['n_params']} params, max prob {probs.max():.3f}, torch f32 vs f64 {diff:.2e}")


def write_numpy_labels(out_dir: pathlib.Path) -> None:
    """``simple_lstm_1l.pt`` re-saved with NumPy label maps and counts (see the docstring)."""
    ckpt = torch.load(out_dir / "simple_lstm_1l.pt", weights_only=True)
    labels = np.unique(np.array(["up", "down"]))  # array(['down', 'up'], dtype='<U4')
    ckpt["label_to_idx"] = {label: i for i, label in enumerate(labels)}
    ckpt["idx_to_label"] = {i: label for i, label in enumerate(labels)}
    ckpt["n_classes"] = np.int64(len(labels))
    ckpt["input_dim"] = np.int64(ckpt["input_dim"])
    assert all(type(k) is np.str_ for k in ckpt["label_to_idx"])
    torch.save(ckpt, out_dir / "simple_lstm_numpy_labels.pt")
    print(f"simple_lstm_numpy_labels: labels {list(map(str, labels))} ({labels.dtype})")


def write_derived(out_dir: pathlib.Path) -> None:
    """The fixtures built from committed ones: NumPy label maps, an encoder checkpoint."""
    write_numpy_labels(out_dir)
    state = torch.load(out_dir / "bilstm.pt", weights_only=True)
    hyperparams = {"input_dim": np.int64(4), "hidden_dim": 6, "num_layers": 2, "dropout": np.float64(0.2)}
    torch.save({"encoder_state_dict": state, "hyperparams": hyperparams}, out_dir / "encoder_bilstm.pt")
    print(f"encoder_bilstm: {len(state)} tensors")
    # TS-TCC's save_encoder: the CNN-Transformer's encoder keys (same names in TSTCCEncoder),
    # hyperparams {cnn_channels, cnn_kernels} only (as lists of Python ints).
    ckpt = torch.load(out_dir / "cnn_transformer_ptr.pt", weights_only=False)
    encoder = {
        k: v for k, v in ckpt["model_state_dict"].items()
        if k.startswith(("cnn_blocks.", "transformer.", "rel_pos_enc."))
    }
    hp = {"cnn_channels": [8, 12, 12], "cnn_kernels": [3, 5, 9]}
    torch.save({"encoder_state_dict": encoder, "hyperparams": hp}, out_dir / "encoder_tstcc.pt")
    print(f"encoder_tstcc: {len(encoder)} tensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = pathlib.Path(__file__).resolve().parents[2]
    parser.add_argument("--out", type=pathlib.Path, default=root / "crates/moola/tests/fixtures/parity")
    parser.add_argument(
        "--derived-only", action="store_true",
        help="only write simple_lstm_numpy_labels.pt, encoder_bilstm.pt and encoder_tstcc.pt from "
        "the existing simple_lstm_1l.pt, bilstm.pt and cnn_transformer_ptr.pt",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.derived_only:
        write_derived(args.out)
        return
    torch.backends.mha.set_fastpath_enabled(False)
    torch.manual_seed(1337)
    gen = torch.Generator().manual_seed(7)
    rng = np.random.default_rng(1337)

    def inputs():
        # Rounded so that the JSON text round-trips to the exact float32 values used here.
        return np.round(ohlc_windows(rng, BATCH).astype(np.float64), 6).astype(np.float32)

    # SimpleLSTM, 1 layer.
    hp = {"hidden_size": 16, "num_layers": 1, "num_heads": 4, "dropout_rate": 0.4}
    lstm1 = SimpleLSTMNet(INPUT_DIM, 16, 1, 4, 0.4, 2)
    perturb(lstm1, gen)
    sharpen(lstm1.classifier[3], 4.0)
    write_case(args.out, "simple_lstm_1l", lstm1, 2, hp, inputs(), meta={"model": "simple_lstm"})

    # SimpleLSTM, 2 layers, 3 classes.
    hp2 = {"hidden_size": 12, "num_layers": 2, "num_heads": 3, "dropout_rate": 0.4}
    lstm2 = SimpleLSTMNet(INPUT_DIM, 12, 2, 3, 0.4, 3)
    perturb(lstm2, gen)
    sharpen(lstm2.classifier[3], 4.0)
    write_case(args.out, "simple_lstm_2l", lstm2, 3, hp2, inputs(), meta={"model": "simple_lstm"})

    # CNN-Transformer with pointer heads.
    hp = {
        "cnn_channels": [8, 12, 12],
        "cnn_kernels": [3, 5, 9],
        "transformer_layers": 2,
        "transformer_heads": 4,
        "dropout_rate": 0.25,
        "loss_alpha": 0.5,
        "loss_beta": 0.25,
    }
    cnn = CnnTransformerNet(INPUT_DIM, 2, [8, 12, 12], [3, 5, 9], 2, 4, 0.25, True)
    perturb(cnn, gen)
    write_case(
        args.out, "cnn_transformer_ptr", cnn, 2, hp, inputs(),
        extra={"predict_pointers": True}, meta={"model": "cnn_transformer"},
    )

    # CNN-Transformer without pointer heads, 3 classes, 2 blocks, odd channel splits.
    hp = {
        "cnn_channels": [7, 8],
        "cnn_kernels": [3, 5],
        "transformer_layers": 1,
        "transformer_heads": 2,
        "dropout_rate": 0.25,
        "loss_alpha": 0.5,
        "loss_beta": 0.25,
    }
    cnn3 = CnnTransformerNet(INPUT_DIM, 3, [7, 8], [3, 5], 1, 2, 0.25, False)
    perturb(cnn3, gen)
    write_case(
        args.out, "cnn_transformer_3c", cnn3, 3, hp, inputs(),
        extra={"predict_pointers": False}, meta={"model": "cnn_transformer"},
    )

    # RWKV-TS.
    hp = {"d_model": 16, "n_layers": 2, "patch_sizes": [7, 15, 21, 35], "dropout_rate": 0.2, "instance_norm": True}
    rwkv = RWKVTSNet(INPUT_DIM, 3, 16, 2, 0.2, True)
    perturb(rwkv, gen)
    write_case(args.out, "rwkv_ts", rwkv, 3, hp, inputs(), meta={"model": "rwkv_ts"})

    # A bare 2-layer bidirectional nn.LSTM state dict (the masked-autoencoder encoder's key
    # style: weight_ih_l0, ..._reverse) with its output sequence and final states.
    bilstm = torch.nn.LSTM(INPUT_DIM, 6, num_layers=2, bidirectional=True, batch_first=True, dropout=0.2)
    bilstm.eval()
    torch.save(bilstm.state_dict(), args.out / "bilstm.pt")
    xb = inputs()[:2, :12]
    with torch.no_grad():
        y, (h, c) = bilstm.double()(torch.from_numpy(xb).double())
    doc = {"input": xb.tolist(), "output": y.numpy().tolist(), "h_n": h.numpy().tolist(), "c_n": c.numpy().tolist()}
    (args.out / "bilstm.json").write_text(json.dumps(doc) + "\n")
    print(f"bilstm: output {tuple(y.shape)}")

    # Broken checkpoints (from simple_lstm_1l).
    hp = {"hidden_size": 16, "num_layers": 1, "num_heads": 4, "dropout_rate": 0.4}
    state = dict(lstm1.state_dict())
    missing = {k: v for k, v in state.items() if k != "ln.bias"}
    save_checkpoint(args.out / "broken_missing.pt", lstm1, 2, hp, state=missing)
    extra = dict(state)
    extra["extra_head.weight"] = torch.zeros(2, 16)
    save_checkpoint(args.out / "broken_extra.pt", lstm1, 2, hp, state=extra)
    shape = dict(state)
    shape["ln.weight"] = torch.ones(17)
    save_checkpoint(args.out / "broken_shape.pt", lstm1, 2, hp, state=shape)

    write_derived(args.out)

    total = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {args.out} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
