"""Writes and reads the same predictions matrix as examples/bench_predictions.rs
with pyarrow: once with pyarrow's defaults (what a user would write), once
with imet's settings (zstd(1), BYTE_STREAM_SPLIT, no dictionary).

python ci/bench/predictions_pyarrow.py OUT_DIR
"""
import json
import resource
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

out = sys.argv[1]
ids = open(f"{out}/ids.txt").read().split()
c = 1103
probs = np.fromfile(f"{out}/probs.f32", dtype="<f4").reshape(len(ids), c)


def table():
    values = pa.array(probs.reshape(-1), type=pa.float32())
    lst = pa.FixedSizeListArray.from_arrays(values, c)
    return pa.table({"id": pa.array(ids), "probs": lst})


for name, kwargs in [
    ("pyarrow-default", {}),
    ("pyarrow-imet-settings", dict(compression="zstd", compression_level=1, use_dictionary=["id"],
                                   column_encoding={"probs.list.element": "BYTE_STREAM_SPLIT"},
                                   write_statistics=["id"], row_group_size=8192)),
]:
    path = f"{out}/{name}.parquet"
    t, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    tbl = table()
    try:
        pq.write_table(tbl, path, **kwargs)
    except Exception:  # older pyarrow names the leaf differently
        kwargs["column_encoding"] = {"probs.list.item": "BYTE_STREAM_SPLIT"}
        pq.write_table(tbl, path, **kwargs)
    write_s, write_cpu = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    back = pq.read_table(path)
    m = np.asarray(back.column("probs").combine_chunks().flatten()).reshape(len(ids), c)
    read_s, read_cpu = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    assert np.array_equal(m, probs)
    import os
    print(json.dumps({"tool": name, "rows": len(ids), "classes": c, "write_s": write_s, "read_s": read_s,
                      "write_user_s": write_cpu.ru_utime - cpu.ru_utime, "write_sys_s": write_cpu.ru_stime - cpu.ru_stime,
                      "read_user_s": read_cpu.ru_utime - write_cpu.ru_utime, "read_sys_s": read_cpu.ru_stime - write_cpu.ru_stime,
                      "write_page_faults": write_cpu.ru_minflt - cpu.ru_minflt,
                      "read_page_faults": read_cpu.ru_minflt - write_cpu.ru_minflt,
                      "bytes": os.path.getsize(path)}))
