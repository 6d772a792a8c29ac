#!/usr/bin/env python3
"""PyTorch parity fixtures for moola's two pre-trainers, computed by the reference's OWN code
(crates/moola/src/pretrain/{masked_lstm,ts_tcc}, test crates/moola/tests/pretrain_parity.rs).

Unlike ``moola_fixtures.py`` (which re-implements the classifiers), this script imports the
upstream classes and functions from a checkout of github.com/HeinekenBottle/moola:

* ``moola.models.bilstm_masked_autoencoder``: ``BiLSTMMaskedAutoencoder`` (forward,
  ``compute_loss``) and ``apply_masking`` (draws the mask and replaces the masked steps);
* ``moola.models.ts_tcc``: ``TSTCC`` (encoder + projection head) and ``info_nce_loss``;
* ``moola.utils.temporal_augmentation``: ``TemporalAugmentation`` (draws the two views).

Regenerate (the commit the Rust port follows, 6ecdb28):

    git --git-dir <moola mirror> archive 6ecdb28c78d6b91c94deabaf621c0c4ea4425e78 \\
        | tar -x -C /tmp/moola_ref
    /work/venv/bin/python tools/parity/moola_pretrain_fixtures.py --reference /tmp/moola_ref

Stubbed with ``sys.modules`` (everything else is the reference's code, imported unchanged from
``<reference>/src``):

* ``loguru``: not installed here; ``moola.utils.augmentation`` (imported by
  ``temporal_augmentation``) logs through it. Replaced by a no-op ``logger``.
* the ``moola.models`` package ``__init__``: it imports every model of the registry and fails at
  this commit (``enhanced_simple_lstm`` imports the missing ``moola.utils.data_validation``).
  ``moola.models`` is registered as a bare package whose ``__path__`` is the real
  ``src/moola/models`` directory, so its submodules import from the reference's files without
  running the registry.

Procedure: each model is built with the reference constructor at small sizes, in float32, with
seeded random weights; the parameters PyTorch initialises to constants (LayerNorm weight/bias,
attention in/out biases, BatchNorm statistics and affine parameters) are perturbed so that none is
trivially 0 or 1, the mask token is scaled up (N(0, 0.3²) instead of N(0, 0.02²)) so that the
masked steps matter, and the autoencoder's LSTM weight matrices are scaled by 3 so that its
outputs vary visibly with the input. The float32 ``state_dict()`` is written with ``torch.save`` (a bare state
dict). The expected values are then computed in eval mode (dropout off, BatchNorm on its running
statistics) by the reference code on a float64 copy (``.double()``) of the same float32 weights
and float32 inputs, so they are exact up to float64 rounding; ``f32_max_abs_diff`` records how far
PyTorch's own float32 run of the same code is from them.

Outputs in ``crates/moola/tests/fixtures/parity/``:

* ``masked_ae.pt`` / ``masked_ae.json``: ``BiLSTMMaskedAutoencoder(input_dim=4, hidden_dim=6,
  num_layers=2, dropout=0.2)``; ``input`` [4, 21, 4] (OHLC-like random walks of moderate
  magnitude), the FIXED ``mask`` [4, 21] and ``x_masked`` drawn by the reference's
  ``apply_masking(x, model.mask_token, "random", mask_ratio=0.3)``, the reconstruction ``recon`` =
  ``model(x_masked)`` and ``loss`` = ``{total, reconstruction, regularization, latent_std,
  num_masked}`` of ``model.compute_loss(recon, x, mask)``.
* ``tstcc.pt`` / ``tstcc.json``: ``TSTCC(input_dim=4, cnn_channels=[4, 8], cnn_kernels=[3, 5],
  transformer_layers=1, transformer_heads=2, dropout=0.25, projection_hidden_dim=16,
  projection_output_dim=8)``; the FIXED views ``v1``, ``v2`` [4, 21, 4] drawn by the reference's
  ``TemporalAugmentation`` (the ``TSTCCPretrainer`` settings) from a base batch, ``z1`` =
  ``model(v1)``, ``z2`` = ``model(v2)`` [4, 8], ``encoded_v1`` = ``model.encoder(v1)`` [4, 21, 8]
  and ``info_nce`` = ``info_nce_loss(z1, z2, temperature=0.5)``.

Both JSON files also hold ``state_dict_keys`` (the reference's keys with their shapes, in order),
``config``, ``reference_commit`` and ``f32_max_abs_diff``.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import pathlib
import sys
import types

import numpy as np
import torch

# The same weight perturbation as the classifier fixtures (this directory is on sys.path when
# the script runs).
from moola_fixtures import perturb
from moola_reference import stub_reference

DEFAULT_COMMIT = "6ecdb28c78d6b91c94deabaf621c0c4ea4425e78"
BATCH = 4
STEPS = 21
FEATURES = 4


def import_reference(reference: pathlib.Path) -> types.SimpleNamespace:
    """Imports the reference's modules from ``<reference>/src`` with the stubs of the docstring."""
    stub_reference(reference, "moola/models/ts_tcc.py")

    mae = importlib.import_module("moola.models.bilstm_masked_autoencoder")
    tstcc = importlib.import_module("moola.models.ts_tcc")
    aug = importlib.import_module("moola.utils.temporal_augmentation")
    return types.SimpleNamespace(
        BiLSTMMaskedAutoencoder=mae.BiLSTMMaskedAutoencoder,
        apply_masking=mae.apply_masking,
        TSTCC=tstcc.TSTCC,
        info_nce_loss=tstcc.info_nce_loss,
        TemporalAugmentation=aug.TemporalAugmentation,
    )


def ohlc_windows(rng: np.random.Generator, batch: int, steps: int) -> np.ndarray:
    """OHLC-like random walks [B, T, 4] around a per-window level in [-2, 2] (float32)."""
    out = np.empty((batch, steps, 4), dtype=np.float32)
    for b in range(batch):
        level = rng.uniform(-2.0, 2.0)
        close = level + np.cumsum(rng.normal(0.0, 0.15, steps))
        open_ = np.concatenate([[level], close[:-1]])
        high = np.maximum(open_, close) + np.abs(rng.normal(0.0, 0.08, steps))
        low = np.minimum(open_, close) - np.abs(rng.normal(0.0, 0.08, steps))
        out[b] = np.stack([open_, high, low, close], axis=1)
    return out


def as_list(t: torch.Tensor) -> list:
    return t.detach().cpu().numpy().tolist()


def key_list(state: dict) -> list:
    return [[k, list(v.shape)] for k, v in state.items()]


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def write(out: pathlib.Path, name: str, state: dict, doc: dict) -> None:
    torch.save(state, out / f"{name}.pt")
    (out / f"{name}.json").write_text(json.dumps(doc) + "\n")
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1024:.1f} KiB" for p in (out / f"{name}.pt", out / f"{name}.json"))
    print(f"{name}: {sizes}; torch f32 vs f64 {doc['f32_max_abs_diff']:.2e}")


def masked_ae(ref, out: pathlib.Path, commit: str, gen: torch.Generator, rng: np.random.Generator) -> None:
    config = {"input_dim": FEATURES, "hidden_dim": 6, "num_layers": 2, "dropout": 0.2}
    model = ref.BiLSTMMaskedAutoencoder(**config)
    perturb(model, gen)
    with torch.no_grad():
        model.mask_token.copy_(0.3 * torch.randn(model.mask_token.shape, generator=gen))
        # Larger LSTM weights so that the encoder's outputs (and the reconstruction) vary
        # visibly with the input (at PyTorch's init they are nearly constant at this width).
        for name, p in model.encoder_lstm.named_parameters():
            if name.startswith("weight_"):
                p.mul_(3.0)
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(v.dtype == torch.float32 for v in state.values())

    x = torch.from_numpy(ohlc_windows(rng, BATCH, STEPS))
    # The reference's masking draws the mask (torch's global RNG, seeded) on the float32 model.
    torch.manual_seed(2024)
    x_masked32, mask = ref.apply_masking(x, model.mask_token, mask_strategy="random", mask_ratio=0.3)
    assert 0 < int(mask.sum()) < mask.numel()

    results = {}
    for dtype in (torch.float64, torch.float32):
        m = copy.deepcopy(model).to(dtype).eval()
        xd = x.to(dtype)
        with torch.no_grad():
            # Same draw replayed: the mask is fixed, the replacement is the reference's.
            torch.manual_seed(2024)
            x_masked, mask_d = ref.apply_masking(xd, m.mask_token, mask_strategy="random", mask_ratio=0.3)
            assert torch.equal(mask_d, mask)
            recon = m(x_masked)
            total, parts = m.compute_loss(recon, xd, mask)
        results[dtype] = {
            "x_masked": x_masked,
            "recon": recon,
            "total": total.reshape(1),
            "reconstruction": torch.tensor([parts["reconstruction"]], dtype=torch.float64),
            "regularization": torch.tensor([parts["regularization"]], dtype=torch.float64),
            "latent_std": torch.tensor([parts["latent_std"]], dtype=torch.float64),
        }
        if dtype == torch.float64:
            loss = {k: float(parts[k]) for k in ("total", "reconstruction", "regularization", "latent_std")}
            loss["num_masked"] = int(parts["num_masked"])
            assert abs(loss["total"] - float(total)) == 0.0
    f64 = results[torch.float64]
    assert torch.equal(f64["x_masked"].float(), x_masked32), "float32 and float64 masking differ"
    assert 0.0 < loss["regularization"], "latent std ≥ 1: the regulariser would be trivially 0"
    doc = {
        "reference_commit": commit,
        "config": config,
        "state_dict_keys": key_list(state),
        "input": as_list(x),
        "mask": as_list(mask),
        "mask_token": as_list(state["mask_token"].reshape(-1)),
        "x_masked": as_list(f64["x_masked"]),
        "recon": as_list(f64["recon"]),
        "loss": loss,
        "f32_max_abs_diff": max_diff(results[torch.float64], results[torch.float32]),
    }
    write(out, "masked_ae", state, doc)


def tstcc(ref, out: pathlib.Path, commit: str, gen: torch.Generator, rng: np.random.Generator) -> None:
    config = {
        "input_dim": FEATURES,
        "cnn_channels": [4, 8],
        "cnn_kernels": [3, 5],
        "transformer_layers": 1,
        "transformer_heads": 2,
        "dropout": 0.25,
        "projection_hidden_dim": 16,
        "projection_output_dim": 8,
    }
    model = ref.TSTCC(**config)
    perturb(model, gen)
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}

    base = torch.from_numpy(ohlc_windows(rng, BATCH, STEPS))
    # The TSTCCPretrainer's augmentation settings, on torch's global RNG (seeded).
    augmentation = ref.TemporalAugmentation(
        jitter_prob=0.8, jitter_sigma=0.03, scaling_prob=0.5, scaling_sigma=0.1,
        time_warp_prob=0.5, time_warp_sigma=0.2,
    )
    torch.manual_seed(99)
    v1, v2 = augmentation(base)
    v1, v2 = v1.float().contiguous(), v2.float().contiguous()
    assert not torch.equal(v1, v2)

    results = {}
    for dtype in (torch.float64, torch.float32):
        m = copy.deepcopy(model).to(dtype).eval()
        with torch.no_grad():
            a, b = v1.to(dtype), v2.to(dtype)
            z1, z2 = m(a), m(b)
            results[dtype] = {
                "z1": z1,
                "z2": z2,
                "encoded_v1": m.encoder(a),
                "info_nce": ref.info_nce_loss(z1, z2, temperature=0.5).reshape(1),
            }
    f64 = results[torch.float64]
    doc = {
        "reference_commit": commit,
        "config": config,
        "temperature": 0.5,
        "state_dict_keys": key_list(state),
        "v1": as_list(v1),
        "v2": as_list(v2),
        "z1": as_list(f64["z1"]),
        "z2": as_list(f64["z2"]),
        "encoded_v1": as_list(f64["encoded_v1"]),
        "info_nce": float(f64["info_nce"]),
        "f32_max_abs_diff": max_diff(results[torch.float64], results[torch.float32]),
    }
    write(out, "tstcc", state, doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = pathlib.Path(__file__).resolve().parents[2]
    parser.add_argument("--reference", type=pathlib.Path, required=True,
                        help="a checkout (or `git archive` export) of HeinekenBottle/moola at 6ecdb28")
    parser.add_argument("--commit", default=DEFAULT_COMMIT, help="the reference commit, recorded in the JSON")
    parser.add_argument("--out", type=pathlib.Path, default=root / "crates/moola/tests/fixtures/parity")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ref = import_reference(args.reference.resolve())
    torch.manual_seed(1337)
    gen = torch.Generator().manual_seed(11)
    rng = np.random.default_rng(2026)
    masked_ae(ref, args.out, args.commit, gen, rng)
    tstcc(ref, args.out, args.commit, gen, rng)


if __name__ == "__main__":
    main()
