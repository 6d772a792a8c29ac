#!/usr/bin/env python3
"""PyTorch expectations for the centroids-reid losses (crates/reid/src/loss).

Re-implements the reference's (centroids-reid at commit a1825b7: ``losses/triplet_loss.py``,
``losses/center_loss.py`` and the ``training_step`` of ``train_base_model.py`` /
``train_ctl_model.py``) loss code paths in PyTorch float32 and writes the inputs, loss terms and
gradients of a tiny CTL batch to crates/reid/tests/fixtures/losses/ctl_batch.json:

* euclidean_dist / cosine_dist;
* batch-hard mining by reshaping the masked distance matrix to N x count (the reference's way,
  which needs equal label counts), anchors masked after mining, MarginRankingLoss
  (``TripletLoss``);
* center loss through the clamped, masked B x C matrix (``CenterLoss``);
* label-smoothed CE (``CrossEntropyLabelSmooth``, epsilon 0.1);
* the CTL through the reference's masks: create_masks_train (False at the r-th instance of
  each class in row r), t_re[b, j] = isReal[class(j)*K + b] & isReal[j], centroids as masked
  means divided by max(count, 1), zero centroids dropped (sum |.| <= 1e-7), queries
  (~mask[i]) & t_re[i], rounds with <= 1 centroid skipped (``train_ctl_model.py``);
* the base-model and CTL-model totals, with a bias-free linear classifier standing
  in for BNNeck + fc_query.

Usage: /work/venv/bin/python tools/parity/reid_losses.py [--out DIR]
"""

import argparse
import json
import os

import torch

MARGIN = 0.5
EPSILON = 0.1
CENTER_W = 5e-4


def euclidean_dist(x, y):
    xx = x.pow(2).sum(1, keepdim=True).expand(x.shape[0], y.shape[0])
    yy = y.pow(2).sum(1, keepdim=True).expand(y.shape[0], x.shape[0]).t()
    dist = xx + yy
    dist = torch.addmm(dist, x, y.t(), beta=1, alpha=-2)
    return dist.clamp(min=1e-12).sqrt()


def cosine_dist(x, y):
    xn = x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
    yn = y / y.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return (1 - xn @ yn.t()).abs().clamp(min=1e-12)


def hard_example_mining(dist, labels):
    n = dist.shape[0]
    is_pos = labels.expand(n, n).eq(labels.expand(n, n).t())
    is_neg = ~is_pos
    dist_ap, _ = torch.max(dist[is_pos].contiguous().view(n, -1), 1)
    dist_an, _ = torch.min(dist[is_neg].contiguous().view(n, -1), 1)
    return dist_ap, dist_an


def triplet(feats, labels, dist_fn, mask=None):
    dist = dist_fn(feats, feats)
    dist_ap, dist_an = hard_example_mining(dist, labels)
    if mask is not None:
        dist_ap, dist_an = dist_ap[mask], dist_an[mask]
    y = torch.ones_like(dist_an)
    loss = torch.nn.MarginRankingLoss(margin=MARGIN)(dist_an, dist_ap, y)
    return loss, dist_ap, dist_an


def center_loss(x, labels, centers):
    b, c = x.shape[0], centers.shape[0]
    distmat = x.pow(2).sum(1, keepdim=True).expand(b, c) + centers.pow(2).sum(1, keepdim=True).expand(c, b).t()
    distmat = torch.addmm(distmat, x, centers.t(), beta=1, alpha=-2)
    mask = labels.unsqueeze(1).expand(b, c).eq(torch.arange(c).expand(b, c))
    dist = distmat * mask.float()
    return dist.clamp(min=1e-12, max=1e12).sum() / b


def ce_label_smooth(logits, labels):
    c = logits.shape[1]
    logp = torch.log_softmax(logits, 1)
    q = torch.zeros_like(logp).scatter_(1, labels.unsqueeze(1), 1)
    q = (1 - EPSILON) * q + EPSILON / c
    return (-q * logp).mean(0).sum()


def create_masks_train(labels, k):
    order = []
    for lab in labels.tolist():
        if lab not in order:
            order.append(lab)
    n = labels.shape[0]
    masks = torch.ones(k, n, dtype=torch.bool)
    for lab in order:
        idx = (labels == lab).nonzero().flatten()
        for r in range(k):
            masks[r, idx[r]] = False
    return masks


def ctl(feats, labels, is_real, k, dist_fn):
    p = labels.shape[0] // k
    ir = is_real.view(p, k)
    t_re = ir.t().repeat_interleave(k, dim=1) & is_real.unsqueeze(0)  # [k, n]: ir[c, b] at column c*k+s
    masks = create_masks_train(labels, k) & t_re
    classes = []
    for lab in labels.tolist():
        if lab not in classes:
            classes.append(lab)
    losses, aps, ans, norms = [], [], [], []
    for i in range(k):
        m = masks[i].float()
        cents = []
        for lab in classes:
            sel = (labels == lab).float() * m
            cents.append((feats * sel.unsqueeze(1)).sum(0) / sel.sum().clamp(min=1))
        cents = torch.stack(cents)
        cents = cents[cents.abs().sum(1) > 1e-7]
        q_sel = (~masks[i]) & t_re[i]
        queries, q_labels = feats[q_sel], labels[q_sel]
        if cents.shape[0] > 1:
            x = torch.cat([queries, cents])
            lab2 = torch.cat([q_labels, q_labels])
            loss, ap, an = triplet(x, lab2, dist_fn)
            losses.append(loss)
            aps.append(ap.mean())
            ans.append(an.mean())
            norms.append(cents.norm(dim=1).mean())
    mean = lambda v: torch.stack(v).mean()
    return mean(losses), mean(aps).item(), mean(ans).item(), mean(norms).item()


def run(inputs, dist_fn):
    feats0, labels, is_real, centers0, w = inputs
    out = {}
    # CTL model
    feats = feats0.clone().requires_grad_(True)
    centers = centers0.clone().requires_grad_(True)
    l_tri, ap, an = triplet(feats, labels, dist_fn, mask=is_real)
    l_cen = CENTER_W * center_loss(feats[is_real], labels[is_real], centers)
    l_id = ce_label_smooth(feats[is_real] @ w.t(), labels[is_real])
    l_ctl, c_ap, c_an, c_norm = ctl(feats, labels, is_real, 4, dist_fn)
    total = l_ctl + l_cen + l_id + l_tri
    total.backward()
    out["ctl_model"] = {
        "triplet": l_tri.item(), "dist_ap": ap.tolist(), "dist_an": an.tolist(),
        "center": l_cen.item(), "id": l_id.item(), "centroid_triplet": l_ctl.item(),
        "ctl_dist_ap_mean": c_ap, "ctl_dist_an_mean": c_an, "l2_mean_centroid": c_norm,
        "total": total.item(),
        "grad_features": feats.grad.tolist(), "grad_centers": centers.grad.tolist(),
    }
    # Base model (same batch, mask still applied to the triplet anchors)
    feats = feats0.clone().requires_grad_(True)
    centers = centers0.clone().requires_grad_(True)
    l_tri, _, _ = triplet(feats, labels, dist_fn, mask=is_real)
    l_cen = CENTER_W * center_loss(feats, labels, centers)
    l_id = ce_label_smooth(feats @ w.t(), labels)
    total = l_id + l_tri + l_cen
    total.backward()
    out["base_model"] = {
        "triplet": l_tri.item(), "center": l_cen.item(), "id": l_id.item(), "total": total.item(),
        "grad_features": feats.grad.tolist(), "grad_centers": centers.grad.tolist(),
    }
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                  "crates", "reid", "tests", "fixtures", "losses"))
    args = ap.parse_args()
    torch.manual_seed(7)
    p, k, d, c = 3, 4, 6, 5
    labels = torch.tensor([3] * k + [0] * k + [4] * k)
    is_real = torch.ones(p * k, dtype=torch.bool)
    is_real[1 * k + 2] = False
    is_real[1 * k + 3] = False
    feats = torch.randn(p * k, d) + 0.5
    mock = torch.randn(d)
    feats[~is_real] = mock  # mocks share one feature vector
    centers = torch.randn(c, d)
    w = 0.3 * torch.randn(c, d)
    fixture = {
        "p": p, "k": k, "margin": MARGIN, "label_smoothing": EPSILON, "center_loss_weight": CENTER_W,
        "labels": labels.tolist(), "is_real": is_real.tolist(),
        "features": feats.tolist(), "centers": centers.tolist(), "classifier": w.tolist(),
        "euclidean": run((feats, labels, is_real, centers, w), euclidean_dist),
        "cosine": run((feats, labels, is_real, centers, w), cosine_dist),
        "generator": "tools/parity/reid_losses.py (torch %s)" % torch.__version__,
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "ctl_batch.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(fixture, f, indent=1)
    os.replace(tmp, path)
    print("wrote", os.path.normpath(path))


if __name__ == "__main__":
    main()
