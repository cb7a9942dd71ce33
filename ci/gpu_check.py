#!/usr/bin/env python3
"""The checks of ci/gpu-check.sh (which finds a Python and runs this file).
Standard library only: the reference timing runs as a subprocess under the
Python that has torch.

Each check runs on its own with a time limit; a failure is recorded and the
next check still runs. Results: one JSON file per check and gpu-check.json
(all of them, plus the machine) in the output folder, and a compact summary
on stdout. Exit status 0 only when every check passed.

Checks, in order:
  info    `imet info` sees CUDA (>= 1 device) and cuDNN.
  step    one training step of seresnext50_32x4d at 320 px, batch 64, fp16
          autocast + grad scaler + channels-last + SGD: imet
          (examples/gpu_check.rs step) against PyTorch (ci/bench/train_step.py)
          on this machine, alternating, two rounds each; goal imet <= 1.05x.
  resume  `imet train` killed with SIGKILL after its first checkpoint and
          rerun, against an uninterrupted run (and a second uninterrupted run,
          to separate resume effects from the GPU's own run-to-run
          nondeterminism); reports how far weights and OOF diverge. Exactness
          is promised on CPU only, so divergence is reported, not failed.
  loader  `imet train` of seresnext50_32x4d at 320 px, batch 64 on the sample:
          the train loop's images/s (its `epoch done` log) against the pure
          step's images/s and the loader alone's images/s; the share of train
          time not spent in the model step is the loader's share (plus
          host-to-device copies).
  dag     `imet run --spec jobs/sample.toml --parallel 2`, the sample DAG end
          to end, its models asking for a GPU (the sample asks for none):
          passes when the run exits 0, the submission is written and every
          train job's manifest records a CUDA device.

--cpu runs the same steps on the CPU (IMET_DEVICE=cpu) with tiny sizes, so
a machine without a GPU can check the script itself: the CUDA assertions
become CPU ones, timings are not judged, and every limit is CPU_SLOWER
times longer.
"""
import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# --cpu: every time limit (per command, per check, overall) is this many
# times the GPU one (the CPU mode runs small sizes on a small machine).
CPU_SLOWER = 4


def now():
    return time.monotonic()


class Ctx:
    def __init__(self, args):
        self.args = args
        self.cpu = args.cpu
        self.out = Path(args.out).resolve()
        # The stores the checks write (weights, checkpoints: gigabytes on a
        # GPU) stay out of the results folder: a temporary folder removed at
        # the end, unless --work names one to keep.
        self.keep_work = bool(args.work)
        self.work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="imet-gpu-check-"))
        self.imet = Path(args.imet).resolve()
        self.checker = Path(args.checker).resolve()
        self.python = args.python
        self.deadline = now() + args.deadline_s * (CPU_SLOWER if self.cpu else 1)
        self.env = dict(os.environ)
        self.env.setdefault("RUST_LOG", "info")
        self.env.pop("IMET_ROOT", None)
        if self.cpu:
            self.env["IMET_DEVICE"] = "cpu"
        else:
            self.env.pop("IMET_DEVICE", None)
        # The Python reference runs in this environment, without the
        # LD_LIBRARY_PATH / LD_PRELOAD imet may be given: torch finds its
        # own libraries.
        self.python_env = dict(self.env)
        self.checker_env = self.env
        self.lib_mode = "as built"
        self.results = {}

    def left(self):
        return self.deadline - now()


def run(ctx, cmd, timeout, log=None, cwd=None, env=None, check=True):
    """Runs cmd; returns (rc, stdout, stderr). Appends both to `log`."""
    timeout = max(5.0, min(timeout * (CPU_SLOWER if ctx.cpu else 1), ctx.left()))
    start = now()
    try:
        if env is None:
            env = ctx.checker_env if Path(str(cmd[0])) == ctx.checker else ctx.env
        p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        # The partial output comes back as bytes even with text=True.
        text = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
        rc, out, err = 124, text(e.stdout), text(e.stderr) + f"\n[timed out after {timeout:.0f}s]"
    if log:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(str(c) for c in cmd)}  (rc {rc}, {now() - start:.1f}s)\n{out}\n{err}\n")
    if check and rc != 0:
        tail = "\n".join((err or out).strip().splitlines()[-15:])
        raise CheckError(f"`{Path(str(cmd[0])).name} {' '.join(str(c) for c in cmd[1:4])} ...` exited {rc}: {tail}")
    return rc, out, err


class CheckError(Exception):
    pass


def last_json(text):
    """The whole text as one JSON object (imet's pretty-printed outcomes),
    else its last line that parses as one (the checker's one-line reports)."""
    try:
        v = json.loads(text)
        if isinstance(v, dict):
            return v
    except json.JSONDecodeError:
        pass
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise CheckError(f"no JSON object in: {text.strip()[-500:]}")


def info_json(ctx, env):
    rc, out, err = run(ctx, [ctx.imet, "info"], 60, env=env, check=False)
    if rc != 0:
        return None, (err or out).strip()[-400:]
    if "cannot be preloaded" in err:
        # ld.so goes on without a preload it cannot load: say so.
        return None, err.strip()[-400:]
    # `imet info` prints a version line, then the JSON object.
    return json.loads(out[out.index("{"):]), None


def torch_lib(ctx):
    """The lib/ folder of the Python torch (asked once); None without one."""
    if not hasattr(ctx, "torch_lib"):
        code = "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))"
        try:
            p = subprocess.run([ctx.python, "-c", code], env=ctx.python_env, capture_output=True, text=True, timeout=120)
            lib = p.stdout.strip()
            ctx.torch_lib = lib if p.returncode == 0 and Path(lib, "libtorch_cpu.so").exists() else None
        except (OSError, subprocess.TimeoutExpired):
            ctx.torch_lib = None
    return ctx.torch_lib


def find_libraries(ctx):
    """How imet finds libtorch here: as built (a bundle, or a build on this
    machine), else the Python torch's lib/ (LD_LIBRARY_PATH), and on a GPU
    machine with a binary built without CUDA linked, libtorch_cuda.so
    preloaded from there (nothing in such a binary needs it, so the loader
    would not load it and CUDA would look absent)."""
    notes = []
    lib = None
    if ctx.args.torch_lib == "python":
        info, err = None, "not tried (--torch-lib python)"
    else:
        info, err = info_json(ctx, ctx.env)
    if info is None:
        notes.append(f"as built: {err}")
        lib = torch_lib(ctx)
        if lib is None:
            raise CheckError("imet does not start and no Python torch lib/ to point it at: " + err)
        ctx.env["LD_LIBRARY_PATH"] = lib + os.pathsep + ctx.env.get("LD_LIBRARY_PATH", "")
        ctx.lib_mode = f"LD_LIBRARY_PATH={lib}"
        info, err = info_json(ctx, ctx.env)
        if info is None:
            raise CheckError(f"imet does not start with LD_LIBRARY_PATH={lib}: {err}")
    if not ctx.cpu and not info.get("cuda_available"):
        lib = lib or torch_lib(ctx)
        cuda = Path(lib or "", "libtorch_cuda.so")
        if lib and cuda.exists():
            env = dict(ctx.env)
            env["LD_PRELOAD"] = str(cuda) + (" " + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else "")
            if "LD_LIBRARY_PATH" not in env or lib not in env["LD_LIBRARY_PATH"]:
                env["LD_LIBRARY_PATH"] = lib + os.pathsep + env.get("LD_LIBRARY_PATH", "")
            info2, err2 = info_json(ctx, env)
            if info2 is not None and info2.get("cuda_available"):
                ctx.env = env
                ctx.lib_mode = f"LD_LIBRARY_PATH + LD_PRELOAD={cuda}"
                info = info2
            else:
                notes.append(f"with {cuda} preloaded: {err2 or info2}")
    # The checker binary may come from elsewhere than imet (a kit beside a
    # bundle): when it cannot load libtorch as it is, it gets the bundle's
    # lib/ (the very libraries imet loads) or the Python torch's.
    ctx.checker_env = ctx.env
    if not loads(ctx.checker, ctx.env):
        bundle_lib = ctx.imet.parent.parent / "lib"
        candidates = ([str(bundle_lib)] if (bundle_lib / "libtorch_cpu.so").exists() else []) + [l for l in [torch_lib(ctx)] if l]
        for lib in candidates:
            env = dict(ctx.env, LD_LIBRARY_PATH=lib + os.pathsep + ctx.env.get("LD_LIBRARY_PATH", ""))
            if not ctx.cpu and Path(lib, "libtorch_cuda.so").exists() and "LD_PRELOAD" not in env:
                env["LD_PRELOAD"] = str(Path(lib, "libtorch_cuda.so"))
            if loads(ctx.checker, env):
                ctx.checker_env = env
                notes.append(f"checker binary: LD_LIBRARY_PATH={lib}" + (" + LD_PRELOAD" if "LD_PRELOAD" in env else ""))
                break
        else:
            notes.append("the checker binary cannot load libtorch; step, resume and loader checks will fail")
    return info, notes


def loads(binary, env):
    """Whether `binary` starts (its usage error counts) with `env`."""
    try:
        p = subprocess.run([str(binary)], env=env, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "error while loading shared libraries" not in p.stderr and "symbol lookup error" not in p.stderr


# ---------------------------------------------------------------- checks --


def check_info(ctx, log):
    info, notes = find_libraries(ctx)
    r = {"imet_info": info, "lib_mode": ctx.lib_mode, "notes": notes}
    if ctx.cpu:
        r["ok"] = True
        r["summary"] = f"cpu mode (CUDA not asserted); libtorch threads {info.get('threads')}; {ctx.lib_mode}"
    else:
        r["ok"] = bool(info.get("cuda_available") and info.get("cudnn_available") and info.get("cuda_devices", 0) >= 1)
        r["summary"] = f"cuda {info.get('cuda_available')} ({info.get('cuda_devices')} devices), cudnn {info.get('cudnn_available')}; {ctx.lib_mode}"
    return r


def step_settings(ctx):
    if ctx.cpu:
        return {"size": 64, "batch": 2, "iters": 2, "warmup": 1}
    return {"size": 320, "batch": 64, "iters": 20, "warmup": 5}


def imet_step(ctx, log, s, timeout, arch="seresnext50_32x4d"):
    cmd = [ctx.checker, "step", "--arch", arch, "--device", "cpu" if ctx.cpu else "cuda",
           "--size", s["size"], "--batch", s["batch"], "--iters", s["iters"], "--warmup", s["warmup"],
           "--precision", "fp32" if ctx.cpu else "fp16", "--channels-last", "false" if ctx.cpu else "true"]
    return last_json(run(ctx, cmd, timeout, log)[1])


def torch_step(ctx, log, s, timeout):
    cmd = [ctx.python, REPO / "ci/bench/train_step.py", "--device", "cpu" if ctx.cpu else "cuda",
           "--size", s["size"], "--batch", s["batch"], "--iters", s["iters"], "--warmup", s["warmup"],
           "--amp" if not ctx.cpu else "--no-amp", "--channels-last" if not ctx.cpu else "--no-channels-last"]
    return last_json(run(ctx, cmd, timeout, log, env=ctx.python_env)[1])


def check_step(ctx, log):
    s = step_settings(ctx)
    r = {"settings": s, "imet": [], "pytorch": []}
    # Alternating rounds, so drift of the machine hits both sides.
    for _ in range(1 if ctx.cpu else 2):
        r["imet"].append(imet_step(ctx, log, s, 150))
        r["pytorch"].append(torch_step(ctx, log, s, 150))
    best = lambda runs, k: min(x[k] for x in runs)
    imet_s, torch_s = best(r["imet"], "median_s"), best(r["pytorch"], "median_s")
    r["imet_median_s"], r["pytorch_median_s"] = imet_s, torch_s
    r["ratio"] = imet_s / torch_s
    r["fwd_bwd_ratio"] = best(r["imet"], "fwd_bwd_median_s") / best(r["pytorch"], "fwd_bwd_median_s")
    r["goal"] = 1.05
    r["ok"] = ctx.cpu or r["ratio"] <= r["goal"]
    r["summary"] = (f"imet {imet_s * 1e3:.1f} ms vs pytorch {torch_s * 1e3:.1f} ms per step = {r['ratio']:.3f}x "
                    f"(fwd+bwd only {r['fwd_bwd_ratio']:.3f}x); goal <= {r['goal']}x"
                    + ("; cpu mode: timing not judged" if ctx.cpu else ""))
    return r


def sizes(ctx, which):
    """Spec sizes per check, GPU and --cpu."""
    gpu = {
        "resume": dict(train=800, test=40, classes=30, k=2, arch="seresnext50_32x4d", size=224, batch=32, epochs=3),
        "loader": dict(train=1280, test=16, classes=30, k=5, arch="seresnext50_32x4d", size=320, batch=64, epochs=2),
    }
    cpu = {
        "resume": dict(train=60, test=12, classes=8, k=2, arch="resnet18", size=32, batch=8, epochs=3),
        # resnet18 here: the code paths are the same, and seresnext50 takes
        # minutes per epoch on a small CPU.
        "loader": dict(train=48, test=8, classes=8, k=2, arch="resnet18", size=64, batch=4, epochs=2),
    }
    return (cpu if ctx.cpu else gpu)[which]


def spec_text(root, exp, z, extra=""):
    schedule = ', schedule = { kind = "step", milestones = [2], factor = 0.5 }' if z["epochs"] > 2 else ""
    return f"""experiment = "{exp}"
seed = 5
[storage]
root = "{root}"
[data.sample]
train = {z['train']}
test = {z['test']}
classes = {z['classes']}
seed = 3
[folds]
k = {z['k']}
[image]
workers = 0
[[models]]
name = "m"
arch = "{z['arch']}"
size = {z['size']}
augment = [{{ random_resized_crop = {{ size = {z['size']}, scale = [0.5, 1.0] }} }}, {{ hflip = {{}} }}]
tta = {{ hflip = true }}
[models.train]
batch_size = {z['batch']}
{extra}
phases = [{{ epochs = {z['epochs']}, optimizer = {{ kind = "sgd", lr = 0.01, momentum = 0.9 }}{schedule} }}]
"""


def fold_dir(root, exp):
    return Path(root) / "runs" / exp / "models" / "m" / "fold=0"


def check_resume(ctx, log):
    base = ctx.work / "resume"
    shutil.rmtree(base, ignore_errors=True)
    z = sizes(ctx, "resume")
    roots = {n: base / n for n in ("a", "b", "c")}
    for n, root in roots.items():
        root.mkdir(parents=True)
        (base / f"{n}.toml").write_text(spec_text(root / "store", "resume", z))
    # One sample, copied: the three runs read the same images.
    run(ctx, [ctx.imet, "folds", "--spec", base / "a.toml"], 120, log)
    for n in ("b", "c"):
        shutil.copytree(roots["a"] / "store" / "data", roots[n] / "store" / "data")
        run(ctx, [ctx.imet, "folds", "--spec", base / f"{n}.toml"], 60, log)
    job = ["--model", "m", "--fold", "0"]
    t0 = now()
    run(ctx, [ctx.imet, "train", "--spec", base / "a.toml", *job], 150, log)
    uninterrupted_s = now() - t0
    run(ctx, [ctx.imet, "predict", "--spec", base / "a.toml", *job], 90, log)

    # b: killed after its first checkpoint, a little into the next epoch.
    fd = fold_dir(roots["b"] / "store", "resume")
    first = fd / "checkpoints" / "epoch=1.safetensors"
    with open(log, "a") as f:
        f.write("$ imet train (b, to be killed)\n")
        f.flush()
        t0 = now()
        child = subprocess.Popen([str(ctx.imet), "train", "--spec", str(base / "b.toml"), *job], env=ctx.env, stdout=f, stderr=f)
        while not first.exists():
            if child.poll() is not None:
                raise CheckError(f"train b exited ({child.returncode}) before its first checkpoint")
            if now() - t0 > min(150, ctx.left()):
                child.kill()
                raise CheckError("no first checkpoint in time")
            time.sleep(0.01)
        to_first = now() - t0
        # About half an epoch into epoch 2 (an epoch's time estimated from
        # the uninterrupted run, start-up counted as one more epoch).
        time.sleep(0.5 * min(to_first, uninterrupted_s / (z["epochs"] + 1)))
        child.send_signal(signal.SIGKILL)
        child.wait()
        killed_after = now() - t0
    finished_before_kill = (fd / "_TRAINED.json").exists()
    left = sorted(p.name for p in (fd / "checkpoints").glob("*.safetensors"))
    rc, out, _ = run(ctx, [ctx.imet, "train", "--spec", base / "b.toml", *job], 150, log)
    outcome = last_json(out) if out.strip() else {}
    run(ctx, [ctx.imet, "predict", "--spec", base / "b.toml", *job], 90, log)

    run(ctx, [ctx.imet, "train", "--spec", base / "c.toml", *job], 150, log)
    run(ctx, [ctx.imet, "predict", "--spec", base / "c.toml", *job], 90, log)

    fa, fc = fold_dir(roots["a"] / "store", "resume"), fold_dir(roots["c"] / "store", "resume")
    resumed = last_json(run(ctx, [ctx.checker, "compare", fa, fd], 60, log)[1])
    repeat = last_json(run(ctx, [ctx.checker, "compare", fa, fc], 60, log)[1])
    r = {
        "spec": z, "uninterrupted_train_s": uninterrupted_s, "first_checkpoint_s": to_first, "killed_at_s": killed_after,
        "checkpoints_at_kill": left, "finished_before_kill": finished_before_kill,
        "resumed_from": outcome.get("resumed_from"), "resumed_vs_uninterrupted": resumed, "repeat_vs_uninterrupted": repeat,
    }
    exact = resumed["weights_identical"] and resumed["oof_identical"]
    r["exact"] = exact
    r["ok"] = (not finished_before_kill) and bool(outcome.get("resumed_from")) and (exact or not ctx.cpu)
    r["summary"] = (
        f"killed at {killed_after:.1f}s (first checkpoint {to_first:.1f}s), resumed from epoch {outcome.get('resumed_from')}; "
        f"resumed vs uninterrupted: weights max |d| {resumed['weights_max_abs_diff']:.3g}, OOF max |d| {resumed['oof_max_abs_diff']:.3g}"
        f" ({'identical' if exact else 'diverged'}); two uninterrupted runs: weights {repeat['weights_max_abs_diff']:.3g}, "
        f"OOF {repeat['oof_max_abs_diff']:.3g}")
    if finished_before_kill:
        r["summary"] += "; the run finished before the kill: inconclusive"
    return r


def epoch_logs(stderr):
    """The train loop's `epoch done` events from JSON log lines."""
    epochs = []
    for line in stderr.splitlines():
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        fields = ev.get("fields", {})
        if fields.get("message") == "epoch done":
            epochs.append({"epoch": int(fields["epoch"]), "images_per_sec": float(fields["images_per_sec"]),
                           "train_loss": float(fields["train_loss"])})
    return epochs


def check_loader(ctx, log):
    base = ctx.work / "loader"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    z = sizes(ctx, "loader")
    spec = base / "spec.toml"
    spec.write_text(spec_text(base / "store", "loader", z))
    run(ctx, [ctx.imet, "folds", "--spec", spec], 120, log)
    env = dict(ctx.env, IMET_LOG_FORMAT="json")
    _, out, err = run(ctx, [ctx.imet, "train", "--spec", spec, "--model", "m", "--fold", "0"], 180, log, env=env)
    epochs = epoch_logs(err)
    if not epochs:
        raise CheckError("no `epoch done` events in the train log")
    train_ips = epochs[-1]["images_per_sec"]  # the last epoch: cuDNN and caches warm
    _, out, _ = run(ctx, [ctx.checker, "loader", "--spec", spec, "--model", "m", "--fold", "0", "--epochs", "2"], 120, log)
    loader = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    loader_ips = loader[-1]["images_per_s"]
    s = {"size": z["size"], "batch": z["batch"], "iters": 3 if ctx.cpu else 10, "warmup": 1 if ctx.cpu else 3}
    step = imet_step(ctx, log, s, 120, arch=z["arch"])
    step_ips = step["images_per_s"]
    share = max(0.0, 1.0 - train_ips / step_ips)
    r = {"spec": z, "train_epochs": epochs, "train_images_per_s": train_ips, "step_images_per_s": step_ips,
         "loader_only_images_per_s": loader_ips, "loader_only": loader, "step": step, "loader_share": share}
    r["ok"] = True
    r["summary"] = (f"train loop {train_ips:.4g} img/s, model step alone {step_ips:.4g} img/s, loader alone {loader_ips:.4g} img/s: "
                    f"{share * 100:.0f}% of train time outside the model step"
                    + (" (loader-bound)" if loader_ips < step_ips else ""))
    return r


def check_dag(ctx, log):
    base = ctx.work / "dag"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    spec = REPO / "jobs" / "sample.toml"
    store = base / "store"
    sets = ["--set", f"storage.root={store}"]
    models = ["r18", "r34"]
    if ctx.cpu:
        # The same DAG, smaller: two folds of a small sample, one epoch.
        for kv in ["data.sample.train=60", "data.sample.test=12", "folds.k=2"] + [f"models[{m}].train.phases[0].epochs=1" for m in models]:
            sets += ["--set", kv]
    else:
        # The sample asks for no GPU (it is made for CPUs), and the runner
        # hides the GPU from jobs that ask for none: ask for one.
        for m in models:
            sets += ["--set", f"models[{m}].resources.gpus=1"]
    t0 = now()
    rc, out, err = run(ctx, [ctx.imet, "run", "--spec", spec, *sets, "--parallel", "2", "--json"], 300, log, cwd=base, check=False)
    seconds = now() - t0
    _, status, _ = run(ctx, [ctx.imet, "status", "--spec", spec, *sets, "--json"], 60, log, cwd=base, check=False)
    try:
        st = json.loads(status)
    except json.JSONDecodeError:
        st = None
    try:
        summary = json.loads(out)
    except json.JSONDecodeError:
        summary = None
    submission = store / "runs" / "sample" / "ensemble" / "submission.csv"
    # Where each train job ran, as its manifest records it.
    devices = {}
    for m in sorted((store / "runs" / "sample" / "models").glob("*/fold=*/_TRAINED.json")):
        try:
            devices[f"{m.parent.parent.name}/{m.parent.name}"] = json.loads(m.read_text()).get("device")
        except (OSError, json.JSONDecodeError) as e:
            devices[f"{m.parent.parent.name}/{m.parent.name}"] = f"unreadable: {e}"
    on_device = [d for d in devices.values() if isinstance(d, str) and d.startswith("cpu" if ctx.cpu else "cuda")]
    f2 = summary.get("oof_f2") if isinstance(summary, dict) else None
    r = {"seconds": seconds, "rc": rc, "run": summary, "status": st, "submission": submission.exists(),
         "train_devices": devices, "oof_f2": f2, "tail": "\n".join((out + err).strip().splitlines()[-25:])}
    r["ok"] = rc == 0 and submission.exists() and bool(devices) and len(on_device) == len(devices)
    r["summary"] = (f"exit {rc} in {seconds:.0f}s, submission {'written' if submission.exists() else 'missing'}, "
                    f"{len(on_device)} of {len(devices)} train jobs on {'the CPU' if ctx.cpu else 'CUDA'}"
                    + (f", ensemble OOF F2 {f2:.4f}" if isinstance(f2, (int, float)) else ""))
    return r


# (name, function, time limit on a GPU in seconds). The limits are upper
# bounds; --deadline-s bounds them all together, so time a check does not
# use goes to the later ones (the DAG, last, gets what is left).
CHECKS = [("info", check_info, 60), ("step", check_step, 120), ("resume", check_resume, 150),
          ("loader", check_loader, 120), ("dag", check_dag, 300)]


def machine(ctx):
    m = {"host": platform.node(), "cpus": os.cpu_count(), "python": ctx.python, "imet": str(ctx.imet), "cpu_mode": ctx.cpu}
    try:
        m["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                         capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        m["nvidia_smi"] = f"unavailable: {e}"
    try:
        m["torch"] = subprocess.run([ctx.python, "-c", "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())"],
                                    env=ctx.python_env, capture_output=True, text=True, timeout=120).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        m["torch"] = f"unavailable: {e}"
    return m


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--imet", required=True)
    p.add_argument("--checker", required=True, help="the gpu_check example binary")
    p.add_argument("--python", default=sys.executable, help="a Python with torch (the reference)")
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu-check-out")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--work", default="", help="where the checks' stores go, kept (default: a temporary folder, removed)")
    p.add_argument("--only", default="", help="comma-separated checks to run (default: all; info always runs)")
    p.add_argument("--deadline-s", type=float, default=440,
                   help=f"all checks together, seconds (default 440, which leaves the 8 minutes room for "
                        f"unpacking and the machine's description; --cpu: {CPU_SLOWER} times this)")
    p.add_argument("--torch-lib", choices=["auto", "python"], default="auto",
                   help="auto: imet's libtorch as built, else the Python torch's lib/; "
                        "python: always the Python torch's lib/ (LD_LIBRARY_PATH, and libtorch_cuda.so preloaded on a GPU)")
    args = p.parse_args()
    ctx = Ctx(args)
    ctx.out.mkdir(parents=True, exist_ok=True)
    ctx.work.mkdir(parents=True, exist_ok=True)
    only = {c for c in args.only.split(",") if c}
    started = now()
    for name, fn, cap in CHECKS:
        if only and name not in only and name != "info":
            continue
        log = ctx.out / f"{name}.log"
        log.write_text("")
        t0 = now()
        saved = ctx.deadline
        # The CPU mode is slower on a small machine; its limits are looser.
        ctx.deadline = min(saved, now() + cap * (CPU_SLOWER if ctx.cpu else 1))
        if ctx.left() < 10:
            r = {"ok": False, "summary": "skipped: out of time"}
        else:
            try:
                r = fn(ctx, log)
            except CheckError as e:
                r = {"ok": False, "summary": f"error: {e}"}
            except Exception as e:  # a bug in a check must not stop the others
                r = {"ok": False, "summary": f"check crashed: {type(e).__name__}: {e}"}
        ctx.deadline = saved
        r["seconds"] = round(now() - t0, 1)
        ctx.results[name] = r
        (ctx.out / f"{name}.json").write_text(json.dumps(r, indent=2, default=str) + "\n")
        print(f"{'PASS' if r['ok'] else 'FAIL'}  {name:<7} {r['seconds']:6.1f}s  {r['summary']}", flush=True)
    if not ctx.keep_work:
        shutil.rmtree(ctx.work, ignore_errors=True)
    report = {"machine": machine(ctx), "lib_mode": ctx.lib_mode, "seconds": round(now() - started, 1),
              "ok": all(r["ok"] for r in ctx.results.values()), "checks": ctx.results,
              "work": str(ctx.work) if ctx.keep_work else None}
    (ctx.out / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"{'ALL PASS' if report['ok'] else 'SOME FAILED'} in {report['seconds']:.0f}s; results in {ctx.out}/gpu-check.json")
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
