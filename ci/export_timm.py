#!/usr/bin/env python3
"""Exports timm models to safetensors with timm's state_dict names, the
format imet's native models load (src/model/weights.rs).

  weights:   python ci/export_timm.py weights --model legacy_seresnext50_32x4d \
                 --out weights/ [--random --seed 0]
             Pretrained ImageNet weights (needs internet for the timm hub) or,
             with --random, a seeded random initialisation. timm's classifier
             is kept under its timm name; imet skips it and reports a fresh head.

  reference: python ci/export_timm.py reference --out DIR --cases '[{...}, ...]'
             For each case {"name", "model", "size", "classes", "se", "partial_conv",
             "train_step"}: a seeded random model with randomised BatchNorm
             affine parameters and running statistics calibrated on random
             images, written as DIR/NAME.safetensors with the classifier renamed
             to imet's `head.fc.*`, and DIR/NAME.reference.safetensors holding
             `input` [2, 3, size, size] and eval-mode `logits`; with train_step,
             also `train.loss` (BCE-with-logits against `train.targets` in train
             mode) and `grad_norm.<param>` for every parameter. Used by
             tests/model_parity.rs.

  script:    python ci/export_timm.py script --out DIR
             A small scripted conv-BN-linear module (DIR/tiny.pt) plus
             DIR/tiny.reference.safetensors (input, eval logits), used by
             tests/model_weights.rs for the TorchScript path.

Run it with the venv from ci/setup-torch-python.sh (torch 2.11.0 + timm).
"""
import argparse
import json
import os
import sys
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

import timm
from timm.models.senet import SEModule


def state_dict_tensors(model):
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def classifier_name(model):
    classifier = model.get_classifier()
    for name, module in model.named_modules():
        if module is classifier:
            return name
    raise SystemExit(f"cannot find the classifier of {type(model).__name__}")


def add_se_blocks(densenet):
    """SE-DenseNet (recipe R3): an SE block after each dense block, named
    features.se{b} (fc1/fc2 1x1 convs with bias, reduction 16), as
    src/model/densenet.rs builds it."""
    modules = []
    channels = None
    for name, module in densenet.features.named_children():
        modules.append((name, module))
        if name.startswith("denseblock"):
            last = list(module.children())[-1]
            channels = last.conv1.in_channels + last.conv2.out_channels
            modules.append(("se" + name[len("denseblock"):], SEModule(channels, reduction=16)))
    densenet.features = nn.Sequential(OrderedDict(modules))
    return densenet


def partial_conv_forward(self, x):
    """Partial-convolution based padding (Liu et al. 2018; NVIDIA's
    PartialConv2d with an all-ones single-channel mask)."""
    raw = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
    with torch.no_grad():
        mask = torch.ones(1, 1, x.shape[2], x.shape[3], dtype=x.dtype, device=x.device)
        ones = torch.ones(1, 1, *self.kernel_size, dtype=x.dtype, device=x.device)
        inside = F.conv2d(mask, ones, None, self.stride, self.padding, self.dilation)
        ratio = (self.kernel_size[0] * self.kernel_size[1]) / (inside + 1e-8) * inside.clamp(0, 1)
    out = raw * ratio
    if self.bias is not None:
        out = out + self.bias.view(1, -1, 1, 1)
    return out


def use_partial_conv(model):
    count = 0
    for module in model.modules():
        if type(module) is nn.Conv2d and tuple(module.padding) != (0, 0):
            module.forward = partial_conv_forward.__get__(module, nn.Conv2d)
            count += 1
    if count == 0:
        raise SystemExit("no padded nn.Conv2d to switch to partial padding")
    return model


def build(case):
    torch.manual_seed(case.get("seed", 0))
    model = timm.create_model(case["model"], pretrained=False, num_classes=case.get("classes", 1103))
    if case.get("se"):
        model = add_se_blocks(model)
    if case.get("partial_conv"):
        model = use_partial_conv(model)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    gen = torch.Generator().manual_seed(case.get("seed", 0) + 1)
    with torch.no_grad():
        for bn in bns:
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=gen) * 0.5 + 0.75)
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=gen) * 0.1)
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration batches
        size = case["size"]
        model.train()
        for _ in range(2):
            model(torch.randn(4, 3, size, size, generator=gen))
        for bn in bns:
            bn.momentum = 0.1
    model.eval()
    return model


def export_weights(model, path, rename_classifier):
    tensors = state_dict_tensors(model)
    if rename_classifier:
        prefix = classifier_name(model) + "."
        tensors = {("head.fc." + k[len(prefix):] if k.startswith(prefix) else k): v for k, v in tensors.items()}
    save_file(tensors, path)


def reference(args):
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for case in json.loads(args.cases):
        model = build(case)
        name = case["name"]
        export_weights(model, os.path.join(args.out, name + ".safetensors"), rename_classifier=True)
        gen = torch.Generator().manual_seed(1234)
        size = case["size"]
        x = torch.randn(2, 3, size, size, generator=gen)
        out = {"input": x}
        with torch.no_grad():
            out["logits"] = model(x)
        if case.get("train_step"):
            model.train()
            targets = (torch.rand(2, out["logits"].shape[1], generator=gen) < 0.05).float()
            loss = F.binary_cross_entropy_with_logits(model(x), targets)
            loss.backward()
            out["train.targets"] = targets
            out["train.loss"] = loss.detach().reshape(1)
            prefix = classifier_name(model) + "."
            for pname, p in model.named_parameters():
                if pname.startswith(prefix):
                    pname = "head.fc." + pname[len(prefix):]
                out["grad_norm." + pname] = p.grad.norm().reshape(1)
            for bname, b in model.named_buffers():
                if bname.endswith("running_mean"):
                    out["train.buffer." + bname] = b.detach().clone()
        save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(args.out, name + ".reference.safetensors"))
        print(f"exported {name} ({case['model']}, {size}px)", file=sys.stderr)


class Tiny(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(x.mean((2, 3)))


def script(args):
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 1.5)
    scripted = torch.jit.script(model)
    scripted.save(os.path.join(args.out, "tiny.pt"))
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = scripted(x)
    save_file({"input": x, "logits": logits}, os.path.join(args.out, "tiny.reference.safetensors"))


def weights(args):
    if args.random:
        torch.manual_seed(args.seed)
    model = timm.create_model(args.model, pretrained=not args.random)
    if args.se_densenet:
        model = add_se_blocks(model)
    out = args.out
    if not out.endswith(".safetensors"):
        out = os.path.join(out, args.model + ".safetensors")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    export_weights(model, out, rename_classifier=False)
    print(f"wrote {out}: {len(model.state_dict())} tensors of timm {args.model}", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("weights", help="export one timm model's state_dict")
    w.add_argument("--model", required=True, help="timm model name, e.g. legacy_seresnext50_32x4d")
    w.add_argument("--out", required=True, help="output .safetensors path, or a folder for MODEL.safetensors")
    w.add_argument("--random", action="store_true", help="seeded random weights instead of pretrained")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--se-densenet", action="store_true", help="add SE blocks (sedensenet161)")
    r = sub.add_parser("reference", help="random models + reference logits for the parity tests")
    r.add_argument("--out", required=True)
    r.add_argument("--cases", required=True, help="JSON list of cases")
    s = sub.add_parser("script", help="a small TorchScript module + reference logits")
    s.add_argument("--out", required=True)
    args = parser.parse_args()
    {"weights": weights, "reference": reference, "script": script}[args.command](args)


if __name__ == "__main__":
    main()
