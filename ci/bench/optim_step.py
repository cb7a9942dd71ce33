#!/usr/bin/env python3
"""torch.optim on resnet50's trainable tensors (timm resnet50, 1,103
classes), CPU: the same updates benches/optim.rs times for imet, each with
PyTorch's CPU default (single-tensor loops) and with foreach=True; plus
clip_grad_norm_. Median of 10 timed steps after 3 warm-up steps.

    $IMET_DEPS_DIR/venv-torch/bin/python ci/bench/optim_step.py
"""
import statistics
import time

import timm
import torch


def timed(fn, warmup=3, runs=10):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    model = timm.create_model("resnet50", num_classes=1103)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    count = sum(p.numel() for p in params)
    print(f"{len(params)} tensors, {count} parameters, {torch.get_num_threads()} threads, torch {torch.__version__}")
    configs = [
        ("sgd_nesterov_wd", lambda ps, fe: torch.optim.SGD(ps, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4, foreach=fe)),
        ("adam_wd", lambda ps, fe: torch.optim.Adam(ps, lr=1e-4, weight_decay=1e-4, foreach=fe)),
        ("adamw", lambda ps, fe: torch.optim.AdamW(ps, lr=1e-4, weight_decay=0.01, foreach=fe)),
    ]
    for name, make in configs:
        for foreach in (False, True):
            opt = make(params, foreach)
            t = timed(opt.step)
            print(f"step_{name} foreach={foreach}: {t * 1e3:.1f} ms")
    t = timed(lambda: torch.nn.utils.clip_grad_norm_(params, 1e9, foreach=False))
    print(f"clip_grad_norm foreach=False: {t * 1e3:.1f} ms")


if __name__ == "__main__":
    with torch.no_grad():
        main()
