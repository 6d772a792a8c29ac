#!/usr/bin/env python3
"""PyTorch side of `reid bench`: one CTL training step and eval-mode embedding throughput.

The step is the reference's CTL training step (``training_step`` of centroids-reid's
``train_ctl_model.py``, manual optimisation): ResNet50 (last stride 1, no stem ReLU) → GAP →
pre-BN features for the batch-hard triplet (real anchors), the centre loss and the centroid
triplet loss; BNNeck + bias-free classifier for the label-smoothed CE; backward; Adam (3.5e-4,
L2 5e-4) on the network and SGD(0.5) on the centres with their gradient rescaled by 1/5e-4.
Model and losses are the PyTorch re-implementations of the reference in tools/parity/reid_fixtures.py and
tools/parity/reid_losses.py. Prints JSON on stdout.

Usage: python tools/bench/reid_step.py --p 16 --k 4 --height 256 --width 128 --steps 2
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parity"))
from reid_fixtures import ReidNet  # noqa: E402
from reid_losses import ce_label_smooth, center_loss, ctl, euclidean_dist, triplet  # noqa: E402

from peak_rss import peak_rss_bytes  # noqa: E402 (sibling module)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--p", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--num-classes", type=int, default=751)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--embed-batch", type=int, default=64)
    ap.add_argument("--embed-batches", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    net = ReidNet(args.model, 64, 1, args.num_classes)
    net.train()
    n = args.p * args.k
    x = torch.randn(n, 3, args.height, args.width)
    labels = torch.arange(args.p).repeat_interleave(args.k)
    is_real = torch.ones(n, dtype=torch.bool)
    centers = [net.center_loss.centers]
    params = [p for name, p in net.named_parameters() if p.requires_grad and "center" not in name]
    opt = torch.optim.Adam(params, lr=3.5e-4, weight_decay=5e-4)
    opt_c = torch.optim.SGD(centers, lr=0.5)
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        opt_c.zero_grad()
        f = net.features(x)
        l_tri, _, _ = triplet(f, labels, euclidean_dist, mask=is_real)
        l_cen = 5e-4 * center_loss(f, labels, net.center_loss.centers)
        l_id = ce_label_smooth(net.fc_query(net.bn(f)), labels)
        l_ctl, _, _, _ = ctl(f, labels, is_real, args.k, euclidean_dist)
        (l_ctl + l_cen + l_id + l_tri).backward()
        opt.step()
        net.center_loss.centers.grad *= 1.0 / 5e-4
        opt_c.step()
        if i >= args.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    net.eval()
    xe = torch.randn(args.embed_batch, 3, args.height, args.width)
    with torch.no_grad():
        net.embed(xe)  # warm-up
        t0 = time.perf_counter()
        for _ in range(args.embed_batches):
            net.embed(xe)
        rate = args.embed_batch * args.embed_batches / (time.perf_counter() - t0)
    json.dump({
        "backend": f"torch-{torch.__version__}",
        "threads": torch.get_num_threads(),
        "step_ms": sorted(times)[len(times) // 2],
        "steps_ms": times,
        "embed_images_per_s": rate,
        "peak_rss_bytes": peak_rss_bytes(),
    }, sys.stdout)


if __name__ == "__main__":
    main()
