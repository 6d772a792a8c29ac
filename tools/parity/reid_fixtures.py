#!/usr/bin/env python3
"""PyTorch parity fixtures for the reid model (crates/reid/src/model) and its weight import.

Run with the PyTorch virtualenv (torch and numpy only; torchvision is not needed):

    /work/venv/bin/python tools/parity/reid_fixtures.py                 # small committed fixtures
    /work/venv/bin/python tools/parity/reid_fixtures.py --full DIR      # full-size ResNet50 check

The modules below re-implement the centroids-reid model (``modelling/backbones/resnet.py``,
``resnet_ibn_a.py``, ``modelling/bases.py`` at commit a1825b7 of mikwieczorek/centroids-reid)
with the reference's module and attribute names, so that the state-dict keys are exactly the
reference's (``conv1``, ``bn1``, ``layer1.0.downsample.0``, ``bn1.IN.weight``, ``backbone.base.*``,
``bn.*``, ``fc_query.weight``, ``center_loss.centers``):

* ``ResNet`` (plain): stem conv1 7x7/2, bn1, **no ReLU**, maxpool 3x3/2 pad 1; BasicBlock or
  Bottleneck stages; ``last_stride`` on layer4.
* ``ResNet`` with ``ibn=True`` (ResNet-IBN-a): stem ReLU, ``IBN`` (InstanceNorm2d(half, affine)
  + BatchNorm2d(rest)) as bn1 of every block of layers 1-3, and the unused ``fc``.
* ``ReidNet``: ``backbone.base`` + GAP, BNNeck ``bn`` (bias frozen), ``fc_query`` (no bias),
  ``center_loss.centers``.

Every model gets random weights; its BatchNorm running statistics are first calibrated on random
inputs (so activations stay O(1) through the depth) and then perturbed, and the affine weights are
randomised. Expected outputs are computed in eval mode.

Outputs of the default run (``crates/reid/tests/fixtures/parity/``; reduced width to keep them
small, see ``SMALL``):

* ``<name>.pth``: the backbone's state dict, torchvision / IBN-Net style (``conv1.weight``, ...).
  ``r50w2_plain.pth`` is written in PyTorch's legacy (pre-1.6, non-zip) format like torchvision's
  ``resnet50-19c8e357.pth``, and carries a torchvision-style ``fc.*`` that the loader must skip.
* ``<name>.ckpt``: a PyTorch-Lightning-1.1-style checkpoint: ``state_dict`` with ``backbone.base.*``,
  ``bn.*``, ``fc_query.weight``, ``center_loss.centers``; ``hyper_parameters`` holding the yacs
  config nodes (pickled as ``yacs.config.CfgNode`` objects, as the reference does) plus
  ``num_classes``; optimizer and scheduler states (a ``collections.Counter``), and callback states
  keyed by a class, as PL writes them. ``r18w2_plain.ckpt`` is a "simple" checkpoint (plain-dict
  hyper-parameters, no optimizer state).
* ``input.npy`` float32 [2,3,64,32]; ``<name>_feat.npy`` pre-BN global features and
  ``<name>_emb.npy`` post-BN eval-mode embeddings, float32 [2, emb].
* ``manifest.json``: what each model is (architecture, width, last stride, classes).

With ``--full DIR`` it writes full-width ResNet50 and ResNet50-IBN-a checkpoints (~100 MB each,
not committed), a 2x3x256x128 input and the expected outputs, for the ignored Rust test
``full_resnet50_parity`` (``REID_FULL_PARITY_DIR=DIR``).
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "crates" / "reid" / "tests" / "fixtures" / "parity"


# --------------------------------------------------------------------------------------------
# Reference modules, re-implemented in PyTorch from the upstream files linked in the crate docs
# --------------------------------------------------------------------------------------------


def conv3x3(inplanes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)


class IBN(nn.Module):
    """InstanceNorm2d(affine) on the first floor(planes/2) channels, BatchNorm2d on the rest."""

    def __init__(self, planes: int):
        super().__init__()
        self.half = planes // 2
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x):
        a = self.IN(x[:, : self.half].contiguous())  # the reference's .float() is a no-op in fp32
        b = self.BN(x[:, self.half :].contiguous())
        return torch.cat((a, b), 1)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, ibn=False):
        super().__init__()
        assert not ibn, "the reference has no IBN BasicBlock"
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    """torchvision v1.5 bottleneck (stride on the 3x3); bn1 is an IBN layer when ``ibn``."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, ibn=False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = IBN(planes) if ibn else nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class ResNet(nn.Module):
    """The reference ResNet (plain: no stem ReLU) or ResNet-IBN-a (stem ReLU, IBN, unused fc)."""

    def __init__(self, last_stride, block, layers, width=64, ibn=False, fc_classes=1000):
        super().__init__()
        self.ibn = ibn
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        if ibn:
            self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0], 1, width)
        self.layer2 = self._make_layer(block, width * 2, layers[1], 2, width)
        self.layer3 = self._make_layer(block, width * 4, layers[2], 2, width)
        self.layer4 = self._make_layer(block, width * 8, layers[3], last_stride, width)
        if ibn:
            self.fc = nn.Linear(width * 8 * block.expansion, fc_classes)

    def _make_layer(self, block, planes, blocks, stride, width):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        # IBN in layers 1-3 (the reference: ``planes != 512``).
        ibn = self.ibn and planes != width * 8
        layers = [block(self.inplanes, planes, stride, downsample, ibn=ibn)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, ibn=ibn) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stem(self, x):
        x = self.bn1(self.conv1(x))
        if self.ibn:
            x = self.relu(x)
        return x

    def forward(self, x):
        x = self.maxpool(self.stem(x))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


ARCHS = {
    # name: (block, layers, ibn)
    "resnet18": (BasicBlock, [2, 2, 2, 2], False),
    "resnet34": (BasicBlock, [3, 4, 6, 3], False),
    "resnet50": (Bottleneck, [3, 4, 6, 3], False),
    "resnet101": (Bottleneck, [3, 4, 23, 3], False),
    "resnet152": (Bottleneck, [3, 8, 36, 3], False),
    "resnet50_ibn_a": (Bottleneck, [3, 4, 6, 3], True),
    "resnet101_ibn_a": (Bottleneck, [3, 4, 23, 3], True),
}


class Baseline(nn.Module):
    def __init__(self, base: ResNet):
        super().__init__()
        self.base = base

    def forward(self, x):
        fmap = self.base(x)
        return fmap, fmap.mean(dim=(2, 3))


class CenterLoss(nn.Module):
    def __init__(self, num_classes, feat_dim):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))


class ReidNet(nn.Module):
    def __init__(self, name, width, last_stride, num_classes, fc_classes=1000):
        super().__init__()
        block, layers, ibn = ARCHS[name]
        base = ResNet(last_stride, block, layers, width=width, ibn=ibn, fc_classes=fc_classes)
        emb = width * 8 * block.expansion
        self.backbone = Baseline(base)
        self.center_loss = CenterLoss(num_classes, emb)
        self.bn = nn.BatchNorm1d(emb)
        self.bn.bias.requires_grad_(False)
        self.fc_query = nn.Linear(emb, num_classes, bias=False)
        nn.init.normal_(self.fc_query.weight, std=0.001)

    def features(self, x):
        return self.backbone(x)[1]

    def embed(self, x):
        return self.bn(self.features(x))


# --------------------------------------------------------------------------------------------
# Random weights with calibrated-then-perturbed running statistics
# --------------------------------------------------------------------------------------------


def randomise(model: ReidNet, gen: torch.Generator, shape) -> None:
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:  # conv / linear weights: keep their init scale, new draw
                p.copy_(p.std() * torch.randn(p.shape, generator=gen))
        # Calibrate: cumulative running statistics over a few random batches.
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for _ in range(3):
            model.embed(torch.randn(*shape, generator=gen))
        for m in norms:
            m.momentum = 0.1
            c = m.num_features
            m.running_mean.add_(0.1 * m.running_var.sqrt() * torch.randn(c, generator=gen))
            m.running_var.mul_(0.75 + 0.5 * torch.rand(c, generator=gen))
            m.weight.copy_(0.75 + 0.5 * torch.rand(c, generator=gen))
            m.bias.copy_(0.1 * torch.randn(c, generator=gen))
        # Random-noise images give pooled features of almost no spread across samples, so the
        # calibrated BNNeck variance would blow the embeddings up; use the features' second
        # moment instead, which keeps the embeddings O(1) like real ones.
        model.bn.running_var.copy_(
            (0.75 + 0.5 * torch.rand(model.bn.num_features, generator=gen))
            * (model.bn.running_var + model.bn.running_mean.square())
        )
        for m in model.modules():
            if isinstance(m, nn.InstanceNorm2d):
                c = m.num_features
                m.weight.copy_(0.75 + 0.5 * torch.rand(c, generator=gen))
                m.bias.copy_(0.1 * torch.randn(c, generator=gen))
    model.eval()


# --------------------------------------------------------------------------------------------
# Lightning-style checkpoint content
# --------------------------------------------------------------------------------------------


def fake_module(qualified: str, cls_name: str, base=object):
    """A class that pickles as ``qualified.cls_name`` (the reference's yacs / PL classes)."""
    parts = qualified.split(".")
    for i in range(1, len(parts) + 1):
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    cls = type(cls_name, (base,), {"__module__": qualified, "__qualname__": cls_name})
    setattr(sys.modules[qualified], cls_name, cls)
    return cls


CfgNode = fake_module("yacs.config", "CfgNode", dict)
ModelCheckpoint = fake_module("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint")


def cfg_node(d: dict) -> dict:
    """A yacs CfgNode: a dict subclass whose __dict__ holds yacs's bookkeeping attributes."""
    node = CfgNode()
    for k, v in d.items():
        node[k] = cfg_node(v) if isinstance(v, dict) else v
    node.__dict__.update(
        {"__immutable__": False, "__deleted__": {}, "__renamed__": {}, "__new_allowed__": False}
    )
    return node


def reference_cfg(name: str, emb: int, last_stride: int) -> dict:
    return {
        "MODEL": {
            "NAME": name,
            "BACKBONE_EMB_SIZE": emb,
            "LAST_STRIDE": last_stride,
            "PRETRAINED": True,
            "PRETRAIN_PATH": "./models/resnet50-19c8e357.pth",
            "USE_CENTROIDS": False,
            "KEEP_CAMID_CENTROIDS": True,
            "RESUME_TRAINING": False,
        },
        "INPUT": {"SIZE_TRAIN": [256, 128], "SIZE_TEST": [256, 128], "PROB": 0.5},
        "SOLVER": {"BASE_LR": 3.5e-4, "LR_STEPS": (40, 70), "MARGIN": 0.5},
        "TEST": {"IMS_PER_BATCH": 128, "FEAT_NORM": True, "ONLY_TEST": False},
        "DATASETS": {"NAMES": "market1501", "ROOT_DIR": "/home/data"},
        "GPU_IDS": [0],
        "LOG_DIR": "logs/market1501",
        "USE_MIXED_PRECISION": False,
    }


def lightning_checkpoint(model: ReidNet, name: str, emb: int, last_stride: int, num_classes: int,
                         simple: bool) -> dict:
    cfg = reference_cfg(name, emb, last_stride)
    extra = {"num_classes": num_classes, "num_query": 3, "use_multiple_loggers": True}
    if simple:
        return {
            "epoch": 0,
            "global_step": 0,
            "state_dict": model.state_dict(),
            "hyper_parameters": {**cfg, **extra},
        }
    params = [p for p in model.parameters() if p.requires_grad]
    adam_state = {
        i: {"step": 10, "exp_avg": torch.zeros_like(p[:1]), "exp_avg_sq": torch.zeros_like(p[:1])}
        for i, p in enumerate(params[:3])
    }
    return {
        "epoch": 119,
        "global_step": 1234,
        "pytorch-lightning_version": "1.1.4",
        "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.85), "best_model_path": "x.ckpt"}},
        "optimizer_states": [
            {"state": adam_state,
             "param_groups": [{"lr": 3.5e-6, "betas": (0.9, 0.999), "eps": 1e-8,
                               "weight_decay": 5e-4, "amsgrad": False,
                               "params": list(range(len(params)))}]},
        ],
        "lr_schedulers": [
            {"milestones": collections.Counter({40: 1, 70: 1}), "gamma": 0.1, "last_epoch": 120,
             "base_lrs": [3.5e-4], "_last_lr": [3.5e-6]},
        ],
        "state_dict": model.state_dict(),
        "hyper_parameters": {**{k: cfg_node(v) if isinstance(v, dict) else v
                                for k, v in cfg.items()}, **extra},
    }


# --------------------------------------------------------------------------------------------
# Fixture sets
# --------------------------------------------------------------------------------------------

# name, arch, width, last stride, num classes, fc classes (IBN's unused fc), legacy .pth, simple ckpt
SMALL = [
    ("r50w2_plain", "resnet50", 2, 1, 5, 0, True, False),
    ("r50w2_ibn", "resnet50_ibn_a", 2, 1, 5, 10, False, False),
    ("r18w2_plain", "resnet18", 2, 2, 4, 0, None, True),
]


def build(name, width, last_stride, num_classes, fc_classes, seed, shape) -> ReidNet:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    model = ReidNet(name, width, last_stride, num_classes, fc_classes=fc_classes or 1000)
    randomise(model, gen, shape)
    return model


def save_outputs(model: ReidNet, x: torch.Tensor, out: Path, stem: str) -> None:
    """Expected outputs, computed in float64 from the float32 weights and input (the exact
    result of the reference computation, rounded to float32 when saved). PyTorch's own float32
    forward differs from them by its rounding error, which is printed."""
    model64 = copy.deepcopy(model).double()
    with torch.no_grad():
        feat = model64.features(x.double())
        emb = model64.bn(feat)
        err32 = (model.embed(x).double() - emb).abs().max().item()
    print(f"{stem}: PyTorch float32 vs float64 embeddings, max |diff| = {err32:.2e}")
    np.save(out / f"{stem}_feat.npy", feat.numpy().astype(np.float32))
    np.save(out / f"{stem}_emb.npy", emb.numpy().astype(np.float32))


def backbone_state_dict(model: ReidNet, torchvision_fc: bool) -> dict:
    sd = collections.OrderedDict(model.backbone.base.state_dict())
    if torchvision_fc:  # torchvision's ImageNet files carry fc.*; the loader skips them
        emb = sd["layer4.0.conv1.weight"].shape[1]  # any shape works: it is never read
        sd["fc.weight"] = torch.randn(7, emb)
        sd["fc.bias"] = torch.randn(7)
    return sd


def write_small(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(2, 3, 64, 32, generator=gen)
    np.save(out / "input.npy", x.numpy().astype(np.float32))
    manifest = {}
    for i, (stem, arch, width, ls, ncls, fc_classes, legacy_pth, simple) in enumerate(SMALL):
        model = build(arch, width, ls, ncls, fc_classes, 100 + i, (8, 3, 64, 32))
        with torch.no_grad():  # a non-zero frozen bias, so that the test sees it is loaded
            model.bn.bias.copy_(0.05 * torch.randn(model.bn.num_features, generator=gen))
        emb = model.bn.num_features
        if legacy_pth is not None:
            torch.save(backbone_state_dict(model, torchvision_fc=legacy_pth), out / f"{stem}.pth",
                       _use_new_zipfile_serialization=not legacy_pth)
        torch.save(lightning_checkpoint(model, arch, emb, ls, ncls, simple), out / f"{stem}.ckpt")
        save_outputs(model, x, out, stem)
        manifest[stem] = {"arch": arch, "width": width, "last_stride": ls, "num_classes": ncls,
                          "emb_size": emb, "fc_classes": fc_classes or None,
                          "pth": legacy_pth is not None, "simple_ckpt": simple}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for p in sorted(out.iterdir()):
        print(f"{p.stat().st_size:>9}  {p.relative_to(REPO) if p.is_relative_to(REPO) else p}")


def write_full(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(99)
    x = torch.randn(2, 3, 256, 128, generator=gen)
    np.save(out / "input.npy", x.numpy().astype(np.float32))
    for i, (stem, arch) in enumerate([("resnet50", "resnet50"), ("resnet50_ibn_a", "resnet50_ibn_a")]):
        model = build(arch, 64, 1, 751, 1000, 500 + i, (4, 3, 256, 128))
        torch.save(lightning_checkpoint(model, arch, 2048, 1, 751, False), out / f"{stem}.ckpt")
        save_outputs(model, x, out, stem)
        with torch.no_grad():
            fmap = model.backbone.base(x)
        print(stem, "layer4 map", tuple(fmap.shape))
    for p in sorted(out.iterdir()):
        print(f"{p.stat().st_size:>11}  {p}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="small fixtures directory")
    ap.add_argument("--full", type=Path, help="also write full-size ResNet50 fixtures here")
    args = ap.parse_args()
    torch.set_num_threads(2)
    write_small(args.out)
    if args.full:
        write_full(args.full)


if __name__ == "__main__":
    main()
