"""Writes tests/data/lrnet_reference.pt: a small LR-Net-26's weights, an input batch, and its outputs and parameter
gradients (train mode: BN with batch statistics; eval mode: BN folded), computed with the pure-PyTorch reference op
(LRROBUST_REFERENCE_OP=1). tests/test_local_relation_layer.py checks that the network gives the same today, so a
change of the layer's implementation (merged transforms, another kernel) cannot change what a network computes.

The committed file was written at commit f8691c9, before the query and key transforms were merged into one product:
    LRROBUST_REFERENCE_OP=1 .venv/bin/python tests/data/make_lrnet_reference.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from lrrobust.models import create_model

SPEC = {"name": "lrnet26", "num_classes": 10, "in_chans": 1, "mean": [0.5], "std": [0.25], "stem": "half",
        "width": 0.0625}


def build() -> torch.nn.Module:
    torch.manual_seed(0)
    spec = dict(SPEC)
    return create_model(spec.pop("name"), spec.pop("num_classes"), **spec)


def outputs_and_gradients(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, train: bool):
    model.train(train)
    model.zero_grad(set_to_none=True)
    logits = model(images)
    F.cross_entropy(logits, labels).backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def main(path: Path) -> None:
    model = build()
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(6, 1, 16, 16, generator=gen)
    labels = torch.randint(0, 10, (6,), generator=gen)
    # every weight moved off its initialisation (zero query, zero last BN of each block, ...)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    record = {"spec": SPEC, "state_dict": state, "images": images, "labels": labels}
    for mode in ("train", "eval"):
        model.load_state_dict(state)
        record[mode] = outputs_and_gradients(model, images, labels, mode == "train")
    torch.save(record, path)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("lrnet_reference.pt"))
