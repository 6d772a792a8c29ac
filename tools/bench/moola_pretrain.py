#!/usr/bin/env python3
"""PyTorch side of `moola bench --pretrain`: the time of one pre-training epoch of each of
moola's two self-supervised pre-trainers, with the reference's loops (moola at 6ecdb28):

* masked-lstm (``MaskedLSTMPretrainer.pretrain``): a seeded 10% validation split; per shuffled
  training batch of 512: patch masking (ratio 0.15, patch 7), forward, the loss with its extra
  unmasked encoder pass, backward, global-norm clip 1.0, AdamW(1e-3, wd 1e-4); the cosine LR
  step; validation with fresh masks, without grad.
* ts-tcc (``TSTCCPretrainer.pretrain``): a 10% validation split; per batch two augmented views
  (jitter p 0.8 sigma 0.03, scaling p 0.5 sigma 0.1, time warp p 0.5 sigma 0.2), NT-Xent (tau 0.5),
  backward, clip 1.0, AdamW(1e-4, wd 1e-4); validation on random views without grad.

The nets are the PyTorch re-implementations in tools/parity/moola_nets.py (same parameter
counts as the reference: 566,408 for the autoencoder). Epoch times include validation, like
kiln's ``epoch_seconds``. Prints a JSON list of {"model", "backend", "median_ms", "steps_ms",
"precision"} on stdout, one entry per method, where the steps are epochs after the first.

Usage: python tools/bench/moola_pretrain.py --methods masked-lstm,ts-tcc --windows 2048 --epochs 2
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "parity"))
sys.path.insert(0, HERE)
from moola_nets import MaskedAutoencoderNet, TSTCCNet, info_nce  # noqa: E402
from moola_step import raw_price_windows, time_warp  # noqa: E402

from peak_rss import peak_rss_bytes  # noqa: E402 (sibling module)


def views_aug(x):
    """One TS-TCC view: one coin per operation per batch (the reference's TemporalAugmentation)."""
    x = x.clone()
    if torch.rand(1) < 0.8:
        x = x + torch.randn_like(x) * 0.03
    if torch.rand(1) < 0.5:
        x = x * torch.normal(1.0, 0.1, size=(x.shape[0], 1, 1))
    if torch.rand(1) < 0.5:
        x = time_warp(x, sigma=0.2)
    return x


def batches(n, batch_size, shuffle):
    idx = torch.randperm(n) if shuffle else torch.arange(n)
    return [idx[i:i + batch_size] for i in range(0, n, batch_size)]


def masked_epoch(net, opt, sched, train, val, batch_size):
    net.train()
    for b in batches(len(train), batch_size, True):
        x = train[b]
        x_masked, mask = net.mask(x)
        opt.zero_grad()
        loss = net.loss(net(x_masked), x, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
    sched.step()
    net.eval()
    with torch.no_grad():
        for b in batches(len(val), batch_size, False):
            x = val[b]
            x_masked, mask = net.mask(x)
            net.loss(net(x_masked), x, mask)


def tstcc_epoch(net, opt, sched, train, val, batch_size):
    net.train()
    for b in batches(len(train), batch_size, True):
        x = train[b]
        v1, v2 = views_aug(x), views_aug(x)
        opt.zero_grad()
        loss = info_nce(net(v1), net(v2), 0.5)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
    net.eval()
    with torch.no_grad():
        for b in batches(len(val), batch_size, False):
            x = val[b]
            info_nce(net(views_aug(x)), net(views_aug(x)), 0.5)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--methods", default="masked-lstm,ts-tcc")
    p.add_argument("--windows", type=int, default=2048)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=512)
    args = p.parse_args()
    torch.manual_seed(1337)
    np.random.seed(1337)
    n = args.windows
    x = raw_price_windows(n)
    perm = torch.from_numpy(np.random.permutation(n))
    n_val = int(n * 0.1)
    val, train = x[perm[:n_val]], x[perm[n_val:]]
    results = []
    for method in args.methods.split(","):
        if method == "masked-lstm":
            net = MaskedAutoencoderNet()
            opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
            epoch = masked_epoch
        elif method == "ts-tcc":
            net = TSTCCNet()
            opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-4)
            epoch = tstcc_epoch
        else:
            raise SystemExit(f"unknown pre-training method {method}")
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50, eta_min=1e-5)
        times = []
        for _ in range(args.epochs):
            t0 = time.perf_counter()
            epoch(net, opt, sched, train, val, args.batch_size)
            times.append((time.perf_counter() - t0) * 1e3)
        timed = times[1:] or times
        results.append({
            "model": f"pretrain:{method}",
            "backend": f"torch-{torch.__version__}",
            "median_ms": float(sorted(timed)[len(timed) // 2]),
            "steps_ms": timed,
            "precision": "32",
            "parameters": sum(p.numel() for p in net.parameters()),
        })
    peak = peak_rss_bytes()
    for r in results:
        r["peak_rss_bytes"] = peak
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
