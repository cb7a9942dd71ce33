#!/usr/bin/env python3
"""PyTorch reference for tests/train_parity.rs: losses (values and logit
gradients), torch.optim SGD/Adam/AdamW over fixed gradients,
torch.nn.utils.clip_grad_norm_, and the MultiStepLR / CosineAnnealingLR
schedules. Inputs are generated here from a fixed seed and written beside
the expected outputs, all in one safetensors file:

    train_reference.py --cases '<json>' --out DIR   ->  DIR/reference.safetensors

The JSON (built by the Rust test) holds:
  losses:     [{name, loss: <LossSpec as serde JSON>, targets: "hard"|"soft", masked: bool}]
  optimizers: [{name, spec: <OptimizerSpec as serde JSON>}]
  lr_factors: per-step multipliers of the spec's lr (backbone group)
  head_factor: head lr = backbone lr * head_factor
  clip:       [max_norm, ...]
  multistep:  [{name, milestones, gamma, epochs}]
  cosine:     [{name, epochs, steps_per_epoch, min_factor}]
Runs with the torch 2.11.0 Python of ci/setup-torch-python.sh (CPU).
"""
import argparse
import json
import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

BATCH, CLASSES = 6, 10
# (name, shape); "unused.weight" never receives a gradient.
PARAMS = [
    ("layer1.weight", (4, 3)),
    ("layer1.bias", (4,)),
    ("head.fc.weight", (5, 4)),
    ("head.fc.bias", (5,)),
    ("unused.weight", (3,)),
]
STEPS = 5


def loss_reference(spec, x, y, mask):
    kind = spec["kind"]
    batch = x.shape[0]

    def mean(elements):
        if mask is None:
            return elements.mean()
        return (elements * mask).sum() / (mask.sum() * batch)

    def bce():
        return F.binary_cross_entropy_with_logits(x, y, reduction="none")

    def soft_f2():
        p = torch.sigmoid(x)
        yy = y
        if mask is not None:
            p = p * mask
            yy = y * mask
        tp = (p * yy).sum(1)
        return 1 - (5 * tp / (4 * yy.sum(1) + p.sum(1) + 1e-8)).mean()

    if kind == "bce":
        return mean(bce())
    if kind == "focal":
        gamma, alpha = spec.get("gamma", 2.0), spec.get("alpha")
        ce = bce()
        hard = bool(((y == 0) | (y == 1)).all())
        if hard:
            # torchvision.ops.sigmoid_focal_loss, written out (torchvision is not installed).
            p = torch.sigmoid(x)
            p_t = p * y + (1 - p) * (1 - y)
        else:
            p_t = torch.exp(-ce)
        elements = ce * (1 - p_t) ** gamma
        if alpha is not None:
            elements = elements * (alpha * y + (1 - alpha) * (1 - y))
        return mean(elements)
    if kind == "soft_f2":
        return soft_f2()
    if kind == "bce_soft_f2":
        return mean(bce()) + spec.get("weight", 1.0) * soft_f2()
    raise SystemExit(f"unknown loss kind {kind!r}")


def make_optimizer(spec, groups):
    kind = spec["kind"]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=spec["lr"], momentum=spec.get("momentum", 0.0),
                               nesterov=spec.get("nesterov", False), weight_decay=spec.get("weight_decay", 0.0))
    if kind == "adam":
        return torch.optim.Adam(groups, lr=spec["lr"], betas=tuple(spec["betas"]), eps=spec["eps"],
                                weight_decay=spec["weight_decay"])
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=spec["lr"], betas=tuple(spec["betas"]), eps=spec["eps"],
                                 weight_decay=spec["weight_decay"])
    raise SystemExit(f"unknown optimizer kind {kind!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cases = json.loads(args.cases)
    torch.manual_seed(0)
    out = {}

    # ---- losses ---------------------------------------------------------
    logits = torch.randn(BATCH, CLASSES) * 3
    hard = (torch.rand(BATCH, CLASSES) < 0.3).float()
    hard[0] = 0  # an image without labels
    soft = torch.rand(BATCH, CLASSES)
    mask = torch.tensor([1, 1, 0, 1, 0, 1, 1, 1, 0, 1], dtype=torch.float32)
    out.update({"loss.logits": logits, "loss.hard": hard, "loss.soft": soft, "loss.mask": mask})
    for case in cases["losses"]:
        x = logits.clone().requires_grad_(True)
        y = hard if case["targets"] == "hard" else soft
        value = loss_reference(case["loss"], x, y, mask if case["masked"] else None)
        value.backward()
        out[f"{case['name']}.value"] = value.detach().reshape(1)
        out[f"{case['name']}.grad"] = x.grad

    # ---- optimisers -----------------------------------------------------
    init = {name: torch.randn(*shape) for name, shape in PARAMS}
    grads = [{name: torch.randn(*shape) for name, shape in PARAMS if name != "unused.weight"} for _ in range(STEPS)]
    for name, t in init.items():
        out[f"optim.init.{name}"] = t
    for step, g in enumerate(grads):
        for name, t in g.items():
            out[f"optim.grad{step}.{name}"] = t
    for case in cases["optimizers"]:
        spec = case["spec"]
        params = {name: init[name].clone().requires_grad_(True) for name, _ in PARAMS}
        backbone = [p for n, p in params.items() if not n.startswith("head.")]
        head = [p for n, p in params.items() if n.startswith("head.")]
        opt = make_optimizer(spec, [{"params": backbone}, {"params": head}])
        for step in range(STEPS):
            lr = spec["lr"] * cases["lr_factors"][step]
            opt.param_groups[0]["lr"] = lr
            opt.param_groups[1]["lr"] = lr * cases["head_factor"]
            for name, p in params.items():
                p.grad = grads[step][name].clone() if name in grads[step] else None
            opt.step()
        for name, p in params.items():
            out[f"{case['name']}.final.{name}"] = p.detach().clone()
            for slot, value in opt.state.get(p, {}).items():
                if slot == "step":
                    out[f"{case['name']}.optim.step.{name}"] = value.detach().to(torch.int64).reshape(())
                elif value is not None:
                    out[f"{case['name']}.optim.{slot}.{name}"] = value.detach().clone()

    # ---- clip_grad_norm_ --------------------------------------------------
    clip_grads = {name: torch.randn(*shape) * 0.7 for name, shape in PARAMS if name != "unused.weight"}
    for name, t in clip_grads.items():
        out[f"clip.grad.{name}"] = t
    for i, max_norm in enumerate(cases["clip"]):
        params = [torch.zeros(*t.shape, requires_grad=True) for t in clip_grads.values()]
        for p, g in zip(params, clip_grads.values()):
            p.grad = g.clone()
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        out[f"clip{i}.norm"] = norm.detach().reshape(1)
        for (name, _), p in zip(clip_grads.items(), params):
            out[f"clip{i}.grad.{name}"] = p.grad

    # ---- schedules --------------------------------------------------------
    for case in cases["multistep"]:
        p = torch.zeros(1, requires_grad=True)
        opt = torch.optim.SGD([p], lr=1.0)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=case["milestones"], gamma=case["gamma"])
        lrs = []
        for _ in range(case["epochs"]):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        out[f"{case['name']}.lrs"] = torch.tensor(lrs, dtype=torch.float64)
    for case in cases["cosine"]:
        total = case["epochs"] * case["steps_per_epoch"]
        p = torch.zeros(1, requires_grad=True)
        opt = torch.optim.SGD([p], lr=1.0)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=case["min_factor"])
        lrs = []
        for _ in range(total):
            opt.step()
            sched.step()
            # The rate of the step after `i + 1` scheduler steps: our factor at global step i.
            lrs.append(opt.param_groups[0]["lr"])
        out[f"{case['name']}.lrs"] = torch.tensor(lrs, dtype=torch.float64)

    os.makedirs(args.out, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(args.out, "reference.safetensors"))
    print(f"wrote {len(out)} tensors (torch {torch.__version__})")


if __name__ == "__main__":
    main()
