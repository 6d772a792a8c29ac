#!/usr/bin/env python3
"""PyTorch side of `moola bench`: one training step of each reference model.

The step is the training recipe the reference's deep classifiers share: temporal augmentation
(batch-level coin flips, jitter / per-sample scaling / time warp), mixup or time-axis CutMix,
forward, focal loss (γ=2) with the mixup criterion (the multi-task loss for
`cnn_transformer+pointers`), backward and an AdamW update (lr 5e-4, wd 1e-4). The nets are the
PyTorch re-implementations of the reference models in tools/parity/moola_nets.py.

Prints a JSON list of {"model", "backend", "median_ms", "steps_ms", "peak_rss_bytes"} on stdout; run by
`moola bench` when torch is importable. Threads: torch uses as many as the machine has, like Burn.

Usage: python tools/bench/moola_step.py --models simple_lstm,cnn_transformer,rwkv_ts --batch-size 512
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parity"))
from moola_nets import CnnTransformerNet, RWKVTSNet, SimpleLSTMNet  # noqa: E402

from peak_rss import peak_rss_bytes  # noqa: E402 (sibling module)

T, FEAT, INNER_START, INNER_END = 105, 4, 30, 75


def build(name):
    pointers = name.endswith("+pointers")
    base = name.split("+")[0]
    if base == "simple_lstm":
        return SimpleLSTMNet(FEAT, 64, 1, 4, 0.4, 2), 0.4, True, False
    if base == "cnn_transformer":
        net = CnnTransformerNet(FEAT, 2, [64, 128, 128], [3, 5, 9], 3, 4, 0.25, pointers)
        return net, 0.4, True, pointers
    if base == "rwkv_ts":
        return RWKVTSNet(FEAT, 2, 128, 4, 0.2, True), 0.2, False, False
    raise SystemExit(f"unknown model {name}")


def time_warp(x, sigma=0.2, knots=4):
    # Per sample: random knot speeds, warped time grid, linear interpolation per feature.
    b, t, f = x.shape
    out = x.clone()
    orig = np.arange(t)
    kp = np.linspace(0, t - 1, knots + 2)
    xs = x.cpu().numpy()
    for i in range(b):
        r = np.random.normal(1.0, sigma, knots + 2)
        wk = np.zeros(knots + 2)
        for k in range(1, knots + 2):
            wk[k] = wk[k - 1] + (kp[k] - kp[k - 1]) * r[k]
        wk = wk * (t - 1) / wk[-1]
        warped = np.interp(orig, kp, wk)
        for j in range(f):
            out[i, :, j] = torch.from_numpy(np.interp(warped, orig, xs[i, :, j])).to(x.dtype)
    return out


def temporal_aug(x):
    x = x.clone()
    if torch.rand(1) < 0.5:
        x = x + torch.randn_like(x) * 0.05
    if torch.rand(1) < 0.3:
        x = x * torch.normal(1.0, 0.1, size=(x.shape[0], 1, 1))
    if torch.rand(1) < 0.3:
        x = time_warp(x)
    return x


def mixup_cutmix(x, y, alpha):
    perm = torch.randperm(x.shape[0])
    if np.random.rand() < 0.5:
        lam = np.random.beta(0.3, 0.3)
        cut = int(x.shape[1] * (1 - lam))
        start = np.random.randint(0, x.shape[1] - cut + 1) if cut > 0 else 0
        x = x.clone()
        x[:, start:start + cut] = x[perm, start:start + cut]
        lam = 1 - cut / x.shape[1]
    else:
        lam = np.random.beta(alpha, alpha) if alpha > 0 else 1.0
        x = lam * x + (1 - lam) * x[perm]
    return x, y, y[perm], lam


def focal(logits, y, gamma=2.0):
    ce = F.cross_entropy(logits, y, reduction="none")
    return ((1 - torch.exp(-ce)) ** gamma * ce).mean()


def step_fn(net, opt, x, y, starts, ends, alpha, use_aug, pointers):
    if use_aug:
        x = temporal_aug(x)
    xm, ya, yb, lam = mixup_cutmix(x, y, alpha)
    opt.zero_grad()
    out = net(xm)
    if pointers:
        oh_s = F.one_hot(starts, INNER_END - INNER_START).float()
        oh_e = F.one_hot(ends, INNER_END - INNER_START).float()
        loss = F.cross_entropy(out["classification"], y) + 0.05 * (
            F.binary_cross_entropy_with_logits(out["start"], oh_s)
            + F.binary_cross_entropy_with_logits(out["end"], oh_e))
    else:
        loss = lam * focal(out, ya) + (1 - lam) * focal(out, yb)
    loss.backward()
    opt.step()


def raw_price_windows(n):
    """`n` raw-price OHLC windows [n, 105, 4]: random walks around 20,000 (like NQ futures), drawn
    from NumPy's global generator."""
    close = 19800 + np.cumsum(np.random.uniform(-20, 20, size=(n, T)), axis=1)
    return torch.from_numpy(np.stack([close, close + 3, close - 3, close], axis=-1).astype(np.float32))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="simple_lstm,cnn_transformer,rwkv_ts")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args()
    torch.manual_seed(1337)
    np.random.seed(1337)
    b = args.batch_size
    x = raw_price_windows(b)
    y = torch.arange(b) % 2
    starts = torch.randint(0, 30, (b,))
    ends = starts + torch.randint(1, 15, (b,))
    results = []
    for name in args.models.split(","):
        net, alpha, use_aug, pointers = build(name)
        net.train()
        opt = torch.optim.AdamW(net.parameters(), lr=5e-4, weight_decay=1e-4)
        times = []
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            step_fn(net, opt, x, y, starts, ends, alpha, use_aug, pointers)
            if i >= args.warmup:
                times.append((time.perf_counter() - t0) * 1e3)
        results.append({
            "model": name,
            "backend": f"torch-{torch.__version__}",
            "median_ms": float(sorted(times)[len(times) // 2]),
            "steps_ms": times,
        })
    peak = peak_rss_bytes()
    for r in results:
        r["peak_rss_bytes"] = peak
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
