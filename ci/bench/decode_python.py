"""Side-by-side reference for `examples/bench_decode.rs`: the same PNGs
(a sample written by `imet sample`), the same pipeline (decode,
RandomResizedCrop(320), horizontal flip, normalise to CHW float32), as
images/s on 1 process and on N worker processes, for
  * Pillow + torchvision transforms (the reference pipelines' choice),
  * Pillow + numpy (the same steps written with PIL crop/resize and numpy),
  * OpenCV + albumentations,
plus decode-only ceilings and a PyTorch DataLoader end to end (batch 32,
N workers). Libraries that are missing are reported and skipped.

usage: python ci/bench/decode_python.py SAMPLE_ROOT [WORKERS]
Pillow+torchvision needs torch: run it with $IMET_DEPS_DIR/venv-torch/bin/python;
OpenCV+albumentations with $IMET_VENV/bin/python (ci/requirements-test.txt).
"""
import csv, os, sys, time
from multiprocessing import Pool

import numpy as np

ROOT = sys.argv[1]
WORKERS = int(sys.argv[2]) if len(sys.argv) > 2 else os.cpu_count()
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
ROUNDS = 3


def paths():
    with open(os.path.join(ROOT, "data", "train.csv")) as f:
        r = csv.reader(f)
        next(r)
        return [os.path.join(ROOT, "data", "train", row[0] + ".png") for row in r]


FILES = paths()
BLOBS = [open(p, "rb").read() for p in FILES]


def pil_decode(b):
    import io
    from PIL import Image
    return Image.open(io.BytesIO(b)).convert("RGB")


def cv_decode(b):
    import cv2
    img = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


_TV = None


def tv_full(b):
    global _TV
    if _TV is None:
        import torch
        import torchvision.transforms as T
        torch.set_num_threads(1)
        _TV = T.Compose([T.RandomResizedCrop(320), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN.tolist(), STD.tolist())])
    return _TV(pil_decode(b))


def pil_numpy_full(b):
    import random, math
    from PIL import Image
    img = pil_decode(b)
    w, h = img.size
    area = w * h
    box = None
    for _ in range(10):
        target = area * random.uniform(0.08, 1.0)
        ar = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = random.randint(0, w - cw), random.randint(0, h - ch)
            box = (x, y, x + cw, y + ch)
            break
    if box is None:
        box = (0, 0, w, h)
    img = img.resize((320, 320), Image.BILINEAR, box=box)
    if random.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    a = np.asarray(img, dtype=np.float32) / 255.0
    return ((a - MEAN) / STD).transpose(2, 0, 1).copy()


_ALB = None


def alb_full(b):
    global _ALB
    if _ALB is None:
        import cv2
        import albumentations as A
        cv2.setNumThreads(1)
        _ALB = A.Compose([A.RandomResizedCrop(size=(320, 320)), A.HorizontalFlip(), A.Normalize()])
    return _ALB(image=cv_decode(b))["image"].transpose(2, 0, 1).copy()


def _run_chunk(args):
    name, lo, hi = args
    fn = CASES[name]
    for b in BLOBS[lo:hi]:
        fn(b)
    return hi - lo


CASES = {
    "pillow decode only": pil_decode,
    "opencv decode only": cv_decode,
    "pillow+torchvision rrc320+flip+normalise": tv_full,
    "pillow+numpy rrc320+flip+normalise": pil_numpy_full,
    "opencv+albumentations rrc320+flip+normalise": alb_full,
}


def available(name):
    try:
        CASES[name](BLOBS[0])
        return True
    except ImportError as e:
        print(f"{name:<48} skipped ({e})")
        return False


def rate_single(name):
    best = 0.0
    for _ in range(ROUNDS):
        t = time.perf_counter()
        for b in BLOBS:
            CASES[name](b)
        best = max(best, len(BLOBS) / (time.perf_counter() - t))
    return best


def rate_pool(name, pool):
    n = len(BLOBS)
    step = (n + WORKERS * 4 - 1) // (WORKERS * 4)
    chunks = [(name, lo, min(n, lo + step)) for lo in range(0, n, step)]
    pool.map(_run_chunk, [(name, 0, 1)] * WORKERS)  # warm the workers
    best = 0.0
    for _ in range(ROUNDS):
        t = time.perf_counter()
        pool.map(_run_chunk, chunks)
        best = max(best, n / (time.perf_counter() - t))
    return best


def dataloader():
    try:
        import torch
        from torch.utils.data import DataLoader, Dataset
    except ImportError as e:
        print(f"{'torch DataLoader':<48} skipped ({e})")
        return

    class Files(Dataset):
        def __len__(self):
            return len(FILES)

        def __getitem__(self, i):
            with open(FILES[i], "rb") as f:
                return tv_full(f.read())

    dl = DataLoader(Files(), batch_size=32, shuffle=True, num_workers=WORKERS, persistent_workers=False)
    for epoch in range(2):
        t = time.perf_counter()
        n = sum(x.shape[0] for x in dl)
        print(f"{f'torch DataLoader, batch 32, {WORKERS} workers':<48} {n / (time.perf_counter() - t):>8.1f} images/s (epoch {epoch}, {n} images)")


def main():
    mb = sum(len(b) for b in BLOBS) / 1e6
    print(f"{len(BLOBS)} images, {mb:.1f} MB of PNG; python {sys.version.split()[0]}")
    names = [n for n in CASES if available(n)]
    for n in names:
        print(f"{n + ', 1 process':<48} {rate_single(n):>8.1f} images/s")
    with Pool(WORKERS) as pool:
        for n in names:
            print(f"{n + f', {WORKERS} processes':<48} {rate_pool(n, pool):>8.1f} images/s")
    dataloader()


if __name__ == "__main__":
    main()
