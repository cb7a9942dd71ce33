#!/usr/bin/env python3
"""PyTorch half of the training-step comparison (`gpu_check step`, in
examples/gpu_check.rs, is the imet half; ci/gpu-check.sh runs both on the
same machine): times one full training step of SE-ResNeXt-50 (32x4d) the way
imet's train loop does it: channels-last input, forward under fp16 autocast,
BCE-with-logits over 1,103 classes, the loss read back to the host (as the
loop does for its NaN check and totals, and as a PyTorch loop does with
`loss.item()`), loss scaled by a GradScaler, backward, unscale, SGD step
(momentum 0.9), scaler update, zero_grad. CUDA steps end with a synchronise, so the
wall time per step is the device time.

The network is written here in plain PyTorch, not imported from timm, so a
GPU machine with only torch can run it. It is timm's
`legacy_seresnext50_32x4d` (Cadene's SENet port) with the same `state_dict`
names and shapes as imet's `seresnext50_32x4d`; `--check-timm` (needs timm)
loads one set of random weights into both and compares their logits.

  python ci/bench/train_step.py [--device cuda] [--size 320] [--batch 64] [--iters 20]
      [--warmup 5] [--amp|--no-amp] [--channels-last|--no-channels-last]
      [--foreach|--no-foreach] [--cudnn-benchmark|--no-cudnn-benchmark] [--threads N] [--check-timm]

Prints one JSON object: arch, device, size, batch, amp, channels_last,
foreach, params, median_s, min_s, images_per_s, fwd_bwd_median_s (the same
step without unscale/optimiser/update), peak_mem_gb (CUDA).
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class SEModule(nn.Module):
    def __init__(self, channels, reduction):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        s = self.fc2(F.relu(self.fc1(s), inplace=True)).sigmoid()
        return x * s


class SEResNeXtBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, groups, reduction, stride=1, downsample=None, base_width=4):
        super().__init__()
        width = planes * base_width // 64 * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.se_module = SEModule(planes * 4, reduction)
        self.downsample = downsample

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.se_module(self.bn3(self.conv3(out)))
        out = out + shortcut
        return F.relu(out, inplace=True)


class Head(nn.Module):
    def __init__(self, features, classes):
        super().__init__()
        self.fc = nn.Linear(features, classes)

    def forward(self, x):
        return self.fc(x.mean((2, 3)))


class SEResNeXt50(nn.Module):
    """legacy_seresnext50_32x4d: layers [3, 4, 6, 3], 32 groups, width 4,
    SE reduction 16, one 7x7 stem conv, 1x1 downsampling shortcuts."""

    def __init__(self, classes=1103):
        super().__init__()
        self.layer0 = nn.Sequential()
        self.layer0.add_module("conv1", nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False))
        self.layer0.add_module("bn1", nn.BatchNorm2d(64))
        self.layer0.add_module("relu1", nn.ReLU(inplace=True))
        self.pool0 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        inplanes = 64
        for i, (blocks, planes) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512])):
            stride = 1 if i == 0 else 2
            layers = []
            for b in range(blocks):
                s = stride if b == 0 else 1
                downsample = None
                if b == 0 and (s != 1 or inplanes != planes * 4):
                    downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=s, bias=False), nn.BatchNorm2d(planes * 4))
                layers.append(SEResNeXtBottleneck(inplanes, planes, 32, 16, s, downsample))
                inplanes = planes * 4
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        self.head = Head(2048, classes)

    def forward(self, x):
        x = self.pool0(self.layer0(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.head(x)


def check_timm():
    """Same random weights in this network and timm's; logits must agree."""
    import timm

    torch.manual_seed(0)
    ours = SEResNeXt50(classes=1103).eval()
    ref = timm.create_model("legacy_seresnext50_32x4d", pretrained=False, num_classes=1103).eval()
    sd = {k.replace("head.fc.", "last_linear."): v for k, v in ours.state_dict().items()}
    ref.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        diff = (ours(x) - ref(x)).abs().max().item()
    n_ours = sum(p.numel() for p in ours.parameters())
    n_ref = sum(p.numel() for p in ref.parameters())
    ok = diff < 1e-4 and n_ours == n_ref
    print(json.dumps({"check": "timm", "max_abs_diff": diff, "params": n_ours, "timm_params": n_ref, "ok": ok}))
    return ok


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--foreach", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.optim's multi-tensor SGD (default: torch's own choice, on for CUDA)")
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=False,
                   help="cuDNN autotuning (off by default, as in imet's train loop and gpu_check step)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--check-timm", action="store_true")
    args = p.parse_args()
    if args.check_timm:
        raise SystemExit(0 if check_timm() else 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    amp = args.amp and cuda
    torch.manual_seed(0)
    model = SEResNeXt50().to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, foreach=args.foreach)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(args.batch, 1103, device=device) < 0.05).float()

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def step(full):
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        loss.item()
        scaler.scale(loss).backward()
        if full:
            scaler.step(opt)
            scaler.update()
        opt.zero_grad(set_to_none=False)

    def timed(full):
        for _ in range(args.warmup):
            step(full)
        sync()
        times = []
        for _ in range(args.iters):
            start = time.perf_counter()
            step(full)
            sync()
            times.append(time.perf_counter() - start)
        times.sort()
        return times

    fwd_bwd = timed(False)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    full = timed(True)
    median = full[len(full) // 2]
    print(json.dumps({
        "impl": "pytorch", "arch": "seresnext50_32x4d", "torch": torch.__version__, "device": str(device),
        "size": args.size, "batch": args.batch, "amp": amp, "channels_last": args.channels_last,
        "foreach": opt.defaults.get("foreach"), "params": sum(p.numel() for p in model.parameters()),
        "median_s": median, "min_s": full[0], "images_per_s": args.batch / median,
        "fwd_bwd_median_s": fwd_bwd[len(fwd_bwd) // 2],
        "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }), flush=True)


if __name__ == "__main__":
    main()
