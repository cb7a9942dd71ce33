#!/usr/bin/env python3
"""Splits the MKL sgemm samples of a `perf record --call-graph dwarf` profile
of a training step by the libtorch call site that issued the GEMM
(convolution forward, grad-input, grad-weight, linear), per step. Input is
`perf script --no-inline -F comm,ip,sym` output. Usage:

  perf record -F 499 --call-graph dwarf,16384 -o step.data CMD...
  perf script -i step.data --no-inline -F comm,ip,sym > step.txt
  python ci/bench/perf_gemm_sites.py step.txt STEPS

STEPS is the number of training steps the profiled command ran (warm-up
included); counts are samples per step (at 499 Hz one sample is ~2 ms).
"""
import collections
import sys

SITES = [
    ("slow_conv2d_backward_weight", "1x1 conv (slow_conv2d) grad-weight"),
    ("slow_conv2d_backward_out_cpu_template", "1x1 conv (slow_conv2d) grad-input"),
    ("slow_conv2d_forward", "1x1 conv (slow_conv2d) forward"),
    ("mkldnn_convolution", "oneDNN conv"),
    ("convolution_backward", "oneDNN conv backward"),
    ("addmm", "linear (addmm)"),
]


def samples(path):
    frames = []
    for line in open(path, errors="replace"):
        if not line.startswith(("\t", " ")):
            if frames:
                yield frames
            frames = []
        elif line.strip():
            parts = line.strip().split(" ", 1)
            frames.append(parts[1] if len(parts) > 1 else "")
    if frames:
        yield frames


def main():
    path, steps = sys.argv[1], float(sys.argv[2])
    counts = collections.Counter()
    total = 0
    for frames in samples(path):
        total += 1
        leaf = frames[0]
        if "sgemm" not in leaf:
            continue
        site = "unknown caller (MKL frame without unwind info)"
        for f in frames[1:]:
            hit = next((name for key, name in SITES if key in f), None)
            if hit:
                site = hit
                break
        counts[(leaf.split("(")[0], site)] += 1
    print(f"{total / steps:.1f} samples per step in all")
    for (leaf, site), n in counts.most_common(12):
        print(f"{n / steps:8.1f}  {leaf:32s} {site}")


if __name__ == "__main__":
    main()
