#!/usr/bin/env python3
"""Reads a window parquet file the way the reference does and prints what it holds.

    /work/venv/bin/python tools/data/check_parquet.py FILE.parquet [--values]

Used to check that files written by moola (`write_parquet`, `moola ingest`) load in
pandas/pyarrow: `pd.read_parquet`, then `np.stack([np.stack(f) for f in df.features])` for the
nested layout or `np.array(df.features.tolist())` for the flat one (reference cli.py).
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    df = pd.read_parquet(sys.argv[1])
    print("columns:", {c: str(t) for c, t in df.dtypes.items()})
    print("rows:", len(df))
    first = df.features.iloc[0]
    if len(first) and isinstance(first[0], np.ndarray):
        x = np.stack([np.stack(f) for f in df.features])
    else:
        x = np.array(df.features.tolist())
    print("features:", x.shape, x.dtype, "finite:", bool(np.isfinite(x).all()))
    print("window_id[:3]:", df.window_id.head(3).tolist())
    if "label" in df:
        print("classes (np.unique):", dict(zip(*np.unique(df.label, return_counts=True))))
    for col in ("expansion_start", "expansion_end"):
        if col in df:
            print(f"{col}: dtype {df[col].dtype}, nulls {int(df[col].isna().sum())}")
    if "--values" in sys.argv:
        print("x[0, :3]:", x[0, :3].tolist())
        print("sum:", float(np.asarray(x, dtype=np.float64).sum()))


if __name__ == "__main__":
    main()
