#!/usr/bin/env python3
"""Does imet's SE-ResNeXt code issue costlier ops than timm's? Runs, in ONE
PyTorch process and interleaved step by step (so machine load hits all
variants alike), training steps (forward in train mode, BCE-with-logits,
backward; batch 2, 96 px, CPU) of:

- `timm`: timm's `legacy_seresnext50_32x4d` as is;
- `imet_ops`: the same weights with the SE module and bottleneck forwards
  replaced by the op sequence of imet's `model::layers::SqueezeExcite` and
  `model::senet` bottleneck (out-of-place ReLU inside SE, projection shortcut
  computed after SE, residual added in place); logits checked bitwise equal;
- `default_init`: timm's model re-initialised with PyTorch's default
  Conv2d/Linear init (Kaiming uniform, a = sqrt(5)), which is imet's init.

  python ci/bench/senet_ops_interleaved.py [STEPS]   (default 12; OMP_NUM_THREADS=1)

First counts subnormal (denormal) values among the gradients that reach
the 1x1 convolutions in one step of `timm` and `default_init` (slow
subnormal arithmetic would make the GEMMs' speed depend on the weights'
initialisation). Then prints the median process CPU seconds per step of
each variant and its ratio to `timm`.
"""
import copy
import statistics
import sys
import time
import types

import torch
import torch.nn as nn
import torch.nn.functional as F
import timm
from timm.models.senet import SEModule, SEResNeXtBottleneck


def se_imet(self, x):
    s = x.mean((2, 3), keepdim=True)
    s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
    return x * s


def block_imet(self, x):
    ys = F.relu_(self.bn1(self.conv1(x)))
    ys = F.relu_(self.bn2(self.conv2(ys)))
    ys = self.bn3(self.conv3(ys))
    ys = self.se_module(ys)
    ys += self.downsample(x) if self.downsample is not None else x
    return F.relu_(ys)


def subnormal_gradients(model, x, targets):
    """Subnormal values and all values in the output gradients of the 1x1 convolutions, one step."""
    counts = [0, 0]

    def count(grad):
        tiny = torch.finfo(grad.dtype).tiny
        counts[0] += int(((grad != 0) & (grad.abs() < tiny)).sum())
        counts[1] += grad.numel()

    def watch(module, inputs, output):
        output.register_hook(count)  # returns None: the output stays as it is

    hooks = [
        m.register_forward_hook(watch)
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
    ]
    model.train()
    F.binary_cross_entropy_with_logits(model(x), targets).backward()
    model.zero_grad(set_to_none=False)
    for h in hooks:
        h.remove()
    return counts


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    torch.set_num_threads(1)
    torch.manual_seed(0)
    timm_model = timm.create_model("legacy_seresnext50_32x4d", pretrained=False, num_classes=1103)
    imet_ops = copy.deepcopy(timm_model)
    for m in imet_ops.modules():
        if isinstance(m, SEModule):
            m.forward = types.MethodType(se_imet, m)
        if isinstance(m, SEResNeXtBottleneck):
            m.forward = types.MethodType(block_imet, m)
    default_init = copy.deepcopy(timm_model)
    for m in default_init.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.reset_parameters()
    models = {"timm": timm_model, "imet_ops": imet_ops, "default_init": default_init}
    x = torch.randn(2, 3, 96, 96)
    targets = (torch.rand(2, 1103) < 0.05).float()
    with torch.no_grad():
        same = torch.equal(timm_model.eval()(x), imet_ops.eval()(x))
    print(f"imet_ops logits bitwise equal to timm's: {same}")
    for name in ("timm", "default_init"):
        tiny, total = subnormal_gradients(models[name], x, targets)
        print(f"{name}: {tiny} subnormal values among {total} gradient values reaching 1x1 convolutions")
    times = {k: [] for k in models}
    for i in range(steps + 2):
        for name, model in models.items():
            model.train()
            start = time.process_time()
            F.binary_cross_entropy_with_logits(model(x), targets).backward()
            model.zero_grad(set_to_none=False)
            if i >= 2:
                times[name].append(time.process_time() - start)
    base = statistics.median(times["timm"])
    for name, t in times.items():
        med = statistics.median(t)
        print(f"{name}: median {med:.3f} s CPU/step, {med / base:.3f} x timm")


if __name__ == "__main__":
    main()
