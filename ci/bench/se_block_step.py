#!/usr/bin/env python3
"""Python half of ci/bench/se_block_step.sh: forward + backward of the pieces
of timm's legacy SE-ResNeXt-50 one at a time, on CPU, at the shapes each
stage sees in a batch-2, 96 px training step, with timm's own classes
(`timm.models.senet.SEModule`, `SEResNeXtBottleneck`): the SE module alone
(`se`), one SE bottleneck (`se_block`), the same bottleneck with the SE
module replaced by the identity (`block`) and the first, projecting block of
the stage (`first_se_block`). Mirrors examples/se_block_step.rs.

  python ci/bench/se_block_step.py [--min-cpu 0.5] [--threads 1] [KIND@STAGE...]

Each case: 3 warm-up steps, then steps until --min-cpu process CPU seconds
have passed; a step is forward, loss = sum(y * g) for a fixed random g,
backward (weights and input take gradients), zeroing the gradients. Prints
one JSON object per case: case, iters, cpu_s, user_s, sys_s (per step, from
getrusage), minflt (minor page faults per step).
"""
import argparse
import json
import resource

import torch
import torch.nn as nn
from timm.models.senet import SEModule, SEResNeXtBottleneck

# Output size, input channels of the first block, planes, stride of the first block.
STAGES = [(24, 64, 64, 1), (12, 256, 128, 2), (6, 512, 256, 2), (3, 1024, 512, 2)]
KINDS = ["se", "se_block", "block", "first_se_block"]


def build(kind, stage):
    size, first_in, planes, stride = STAGES[stage - 1]
    out = planes * 4
    if kind == "se":
        return SEModule(out, 16), [2, out, size, size]
    if kind in ("se_block", "block"):
        block = SEResNeXtBottleneck(out, planes, 32, 16, 1, None, base_width=4)
        if kind == "block":
            block.se_module = nn.Identity()
        return block, [2, out, size, size]
    if kind == "first_se_block":
        downsample = nn.Sequential(nn.Conv2d(first_in, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
        block = SEResNeXtBottleneck(first_in, planes, 32, 16, stride, downsample, base_width=4)
        return block, [2, first_in, size * stride, size * stride]
    raise SystemExit(f"case {kind}@{stage}: kind is one of {KINDS}")


def usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--min-cpu", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("cases", nargs="*")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = args.cases or [f"{k}@{s}" for s in range(1, 5) for k in KINDS]
    for case in cases:
        kind, stage = case.split("@")
        module, shape = build(kind, int(stage))
        module.train()
        # Inputs of a block are ReLU outputs that need a gradient.
        xs = torch.randn(shape).relu().requires_grad_(True)
        g = torch.randn(module(xs).shape)
        params = list(module.parameters()) + [xs]

        def run():
            loss = (module(xs) * g).sum()
            loss.backward()
            for t in params:
                if t.grad is not None:
                    t.grad.zero_()

        for _ in range(3):
            run()
        u0, s0, f0 = usage()
        iters = 0
        while True:
            run()
            iters += 1
            u, s, f = usage()
            if iters >= 5 and (u + s) - (u0 + s0) >= args.min_cpu:
                break
        print(json.dumps({
            "case": case, "iters": iters, "cpu_s": ((u + s) - (u0 + s0)) / iters,
            "user_s": (u - u0) / iters, "sys_s": (s - s0) / iters, "minflt": (f - f0) / iters,
        }), flush=True)


if __name__ == "__main__":
    main()
