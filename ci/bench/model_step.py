#!/usr/bin/env python3
"""Python half of ci/bench/model_step.sh: times one training step (forward in
train mode, BCE-with-logits loss, backward) of the timm model behind each imet
arch on CPU, and counts parameters and forward FLOPs (torch's FlopCounterMode,
one multiply-add = 2 FLOPs) at the benchmark size and at the recipe size.

  python ci/bench/model_step.py [--batch 2] [--size 96] [--iters 5] [--threads 2] [ARCH...]

Prints one JSON object per arch: arch, timm, params, median_s, min_s, cpu_s
(process CPU seconds per step; robust to machine load with --threads 1),
gflops_bench (per image at --size), gflops_recipe (per image at recipe size).
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
import timm
from torch.utils.flop_counter import FlopCounterMode

TIMM = {
    "resnet50": "resnet50",
    "resnet101": "resnet101",
    "resnext50_32x4d": "resnext50_32x4d",
    "resnext101_32x8d": "resnext101_32x8d",
    "seresnext50_32x4d": "legacy_seresnext50_32x4d",
    "seresnext101_32x4d": "legacy_seresnext101_32x4d",
    "senet154": "legacy_senet154",
    "densenet121": "densenet121",
    "densenet161": "densenet161",
    "sedensenet161": "densenet161",
    "inception_resnet_v2": "inception_resnet_v2",
    "pnasnet5large": "pnasnet5large",
}
RECIPE_SIZE = {"pnasnet5large": 331}


def flops(model, size):
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, size, size))
    model.train()
    return counter.get_total_flops() / 1e9


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("archs", nargs="*")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for arch in args.archs or list(TIMM):
        if arch == "sedensenet161":
            continue  # no timm counterpart; see BENCHMARKS.md, model section
        model = timm.create_model(TIMM[arch], pretrained=False, num_classes=1103)
        params = sum(p.numel() for p in model.parameters())
        x = torch.randn(args.batch, 3, args.size, args.size)
        targets = (torch.rand(args.batch, 1103) < 0.05).float()
        model.train()
        times = []
        cpu_start = 0.0
        for i in range(args.iters + 2):
            if i == 2:
                cpu_start = time.process_time()
            start = time.perf_counter()
            loss = F.binary_cross_entropy_with_logits(model(x), targets)
            loss.backward()
            model.zero_grad(set_to_none=False)
            if i >= 2:
                times.append(time.perf_counter() - start)
        cpu_s = (time.process_time() - cpu_start) / args.iters
        times.sort()
        print(json.dumps({
            "arch": arch, "timm": TIMM[arch], "params": params,
            "median_s": times[len(times) // 2], "min_s": times[0], "cpu_s": cpu_s,
            "gflops_bench": flops(model, args.size),
            "gflops_recipe": flops(model, RECIPE_SIZE.get(arch, 320)),
        }), flush=True)


if __name__ == "__main__":
    main()
