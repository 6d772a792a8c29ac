#!/usr/bin/env python3
"""Writes the pandas/pyarrow-made parquet fixtures of moola's data tests.

    /work/venv/bin/python tools/data/make_fixtures.py

Output: crates/moola/tests/fixtures/data/*.parquet (a few KB each). The values follow formulas
that crates/moola/tests/data.rs recomputes independently:

* pandas_nested.parquet: the reference's nested layout as pandas writes it. window_id int64
  (101, 102, 103), label strings, features = per row a list of 105 numpy float64 arrays of 4,
  value(row, t, f) = 1000*row + t + f/4; expansion columns with a missing value (pandas stores
  the start column as float64 with NaN, the end column as int64).
* pandas_flat420.parquet: the Oct 11-12 flat layout: 420 float32 per row in timestep-major order,
  value(row, t, f) = 10000*row + 10*t + f at flat position 4*t + f; labels as a pandas
  categorical (dictionary-encoded), in an order that np.unique sorts differently.
* pandas_columns.parquet: no features column (pre-training fallback): ten numeric columns
  f0..f9 (float64 and int64 mixed), value = 100*row + j, plus a string column that is ignored,
  and a non-default pandas index (stored as __index_level_0__, must not become a feature).
* Error fixtures (T=3, F=2): ragged.parquet (row "w2" has 2 steps), null_value.parquet (row
  "w1", step 1, feature 0 is null), no_window_id.parquet, features_string.parquet (features
  stored as JSON strings), binary_features.parquet (pickled numpy arrays, reference @6ecdb28),
  only_start.parquet (expansion_start without expansion_end), fractional_expansion.parquet (row
  "w1" has expansion_start 0.5), zstd.parquet (a codec this build does not decode).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parents[2] / "crates/moola/tests/fixtures/data"


def nested() -> None:
    rows = []
    for r in range(3):
        x = np.array([[1000 * r + t + f / 4 for f in range(4)] for t in range(105)], dtype=np.float64)
        rows.append(list(x))  # a list of numpy arrays, like np.stack-able reference data
    df = pd.DataFrame({
        "window_id": np.array([101, 102, 103], dtype=np.int64),
        "label": ["retracement", "consolidation", "retracement"],
        "features": rows,
        "expansion_start": [35.0, np.nan, 30.0],
        "expansion_end": np.array([40, 50, 74], dtype=np.int64),
    })
    df.to_parquet(OUT / "pandas_nested.parquet", engine="pyarrow", index=False)


def flat420() -> None:
    rows = []
    for r in range(4):
        x = np.array([[10000 * r + 10 * t + f for f in range(4)] for t in range(105)], dtype=np.float32)
        rows.append(x.reshape(-1))  # timestep-major: position 4*t + f
    df = pd.DataFrame({
        "window_id": ["a", "b", "c", "d"],
        "label": pd.Categorical(["reversal", "consolidation", "Zeta", "retracement"]),
        "features": rows,
    })
    df.to_parquet(OUT / "pandas_flat420.parquet", engine="pyarrow", index=False)


def columns() -> None:
    data = {"window_id": ["r0", "r1"]}
    for j in range(10):
        values = [100 * r + j for r in range(2)]
        data[f"f{j}"] = np.array(values, dtype=np.int64 if j % 2 else np.float64)
    data["note"] = ["x", "y"]
    df = pd.DataFrame(data, index=pd.Index([7, 9], name=None))
    df.to_parquet(OUT / "pandas_columns.parquet", engine="pyarrow")  # keeps the index


def small(values: list, name: str, ids: list | None = None, **extra: list) -> None:
    table = {"label": ["a"] * len(values), "features": values, **extra}
    if ids is not None:
        table = {"window_id": ids, **table}
    pq.write_table(pa.table(table), OUT / name)


def errors() -> None:
    ok = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    small([ok, ok, [[1.0, 2.0], [3.0, 4.0]]], "ragged.parquet", ["w0", "w1", "w2"])
    small([ok, [[1.0, 2.0], [None, 4.0], [5.0, 6.0]]], "null_value.parquet", ["w0", "w1"])
    small([ok], "no_window_id.parquet")
    small(["[[1,2],[3,4],[5,6]]"], "features_string.parquet", ["w0"])
    small([pickle.dumps(np.array(ok))], "binary_features.parquet", ["w0"])
    small([ok, ok], "only_start.parquet", ["w0", "w1"], expansion_start=[0, 1])
    pq.write_table(pa.table({"window_id": ["w0"], "features": [ok]}), OUT / "zstd.parquet",
                   compression="zstd")
    small([ok, ok], "fractional_expansion.parquet", ["w0", "w1"],
          expansion_start=[0.0, 0.5], expansion_end=[1.0, 2.0])


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    nested()
    flat420()
    columns()
    errors()
    for path in sorted(OUT.glob("*.parquet")):
        print(f"{path.relative_to(OUT.parents[4])}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
