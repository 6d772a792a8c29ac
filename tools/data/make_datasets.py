#!/usr/bin/env python3
"""Builds the small real datasets shipped under ``datasets/``.

Run from anywhere (needs numpy, pandas, pyarrow and pip; no other network than PyPI):

    /work/venv/bin/python tools/data/make_datasets.py            # writes <repo>/datasets
    /work/venv/bin/python tools/data/make_datasets.py --out DIR  # somewhere else

The inputs are fetched with ``pip download --no-deps`` into a temporary directory:

* ``aeon`` (BSD-3-Clause): the UCR/UEA ``.ts`` files of BasicMotions and ItalyPowerDemand are
  copied byte for byte from ``aeon/datasets/data/<Name>/``.
* ``bokeh-sampledata`` (the stocks data is public domain, Quandl WIKI prices):
  ``bokeh_sampledata/_data/stocks.csv.gz`` is decompressed verbatim to ``ohlc/stocks_daily.csv``,
  and ``ohlc/windows.parquet`` is derived from it (see ``make_windows``).

Everything is deterministic: running the script twice gives the same files (the parquet file is
written without timestamps), and ``datasets/README.md`` is regenerated with the row and class
counts computed here.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

AEON = ("aeon", "1.6.0")
BOKEH = ("bokeh-sampledata", "2026.1")
UCR_SETS = ("BasicMotions", "ItalyPowerDemand")
STOCKS_MEMBER = "bokeh_sampledata/_data/stocks.csv.gz"

# moola's window layout (reference: config/training_config.py): 105 bars, inner window 30..75.
WINDOW = 105
INNER_START, INNER_END = 30, 75
STRIDE = 25
# A day-to-day change of Adj Close / Close by more than this factor marks a stock split.
SPLIT_RATIO = 1.5


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def download(pkg: tuple[str, str], dest: Path) -> Path:
    name, version = pkg
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(dest),
         f"{name}=={version}"],
        check=True,
    )
    stem = name.replace("-", "_")
    wheels = sorted(dest.glob(f"{stem}-{version}-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one wheel for {name}=={version} in {dest}, found {wheels}")
    return wheels[0]


def read_member(wheel: Path, member: str) -> bytes:
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(member)


def license_member(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.endswith(".dist-info/licenses/LICENSE")
                 or n.endswith(".dist-info/licenses/LICENSE.txt")]
    if not names:
        raise SystemExit(f"no LICENSE in {wheel}")
    return sorted(names, key=len)[0]


def ts_summary(path: Path) -> tuple[int, int, int, dict[str, int]]:
    """(rows, dimensions, series length, class counts) of an equal-length labelled .ts file."""
    rows, dims, length, counts = 0, 0, 0, {}
    in_data = False
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            in_data = line.lower() == "@data"
            continue
        *channels, label = line.split(":")
        rows += 1
        dims = len(channels)
        length = len(channels[0].split(","))
        counts[label] = counts.get(label, 0) + 1
    return rows, dims, length, dict(sorted(counts.items()))


def largest_move(close: np.ndarray, rising: bool) -> tuple[int, int]:
    """Indices (i, j), i < j, of the largest rise (or fall) close[j] - close[i] inside `close`.

    Ties go to the smallest i, then the smallest j.
    """
    best, best_ij = -np.inf, (0, 1)
    for i in range(len(close) - 1):
        moves = close[i + 1:] - close[i]
        if not rising:
            moves = -moves
        j = int(np.argmax(moves))
        if moves[j] > best:
            best, best_ij = moves[j], (i, i + 1 + j)
    return best_ij


def make_windows(stocks: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Labelled 105-bar OHLC windows in moola's parquet contract.

    Per ticker (in order of first appearance, bars in file order) a window starts every STRIDE bars.
    Rule-derived labels, not expert labels:
      * label = "up" if close[74] > close[30], "down" if close[74] < close[30]; windows with
        close[74] == close[30] are dropped;
      * (expansion_start, expansion_end) = absolute bar indices i < j in [30, 74] of the largest
        rise close[j] - close[i] ("up") or the largest fall ("down") inside the inner window;
      * windows that contain a stock split (Adj Close / Close jumps by more than 1.5x between two
        consecutive bars; the prices are unadjusted) are dropped.
    """
    rows = []
    dropped = {"flat": 0, "split": 0}
    for ticker, bars in stocks.groupby("Ticker", sort=False):
        ohlc = bars[["Open", "High", "Low", "Close"]].to_numpy(dtype=np.float64)
        dates = bars["Date"].to_numpy()
        ratio = (bars["Adj Close"] / bars["Close"]).to_numpy()
        jump = np.abs(np.log(ratio[1:] / ratio[:-1])) > np.log(SPLIT_RATIO)  # between t and t+1
        for start in range(0, len(bars) - WINDOW + 1, STRIDE):
            if jump[start:start + WINDOW - 1].any():
                dropped["split"] += 1
                continue
            window = ohlc[start:start + WINDOW]
            close = window[:, 3]
            delta = close[INNER_END - 1] - close[INNER_START]
            if delta == 0:
                dropped["flat"] += 1
                continue
            rising = bool(delta > 0)
            i, j = largest_move(close[INNER_START:INNER_END], rising)
            rows.append({
                "window_id": f"{ticker}:{dates[start]}",
                "label": "up" if rising else "down",
                "features": [row.tolist() for row in window],
                "expansion_start": INNER_START + i,
                "expansion_end": INNER_START + j,
            })
    return pd.DataFrame(rows), dropped


def write_windows(df: pd.DataFrame, path: Path) -> None:
    schema = pa.schema([
        ("window_id", pa.string()),
        ("label", pa.string()),
        ("features", pa.list_(pa.list_(pa.float64()))),
        ("expansion_start", pa.int64()),
        ("expansion_end", pa.int64()),
    ])
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    # No pandas metadata / creation timestamps: byte-identical output on every run.
    table = table.replace_schema_metadata(None)
    pq.write_table(table, path, compression="snappy", write_statistics=False)


README = """\
# Bundled datasets

Small real datasets for moola's tests, examples and benchmarks. The files listed here are
generated by `tools/data/make_datasets.py` (other subdirectories document their own source and
licence in their own README); regenerate them (byte-identical) with

    python tools/data/make_datasets.py          # needs numpy, pandas, pyarrow, pip (PyPI access)

The script fetches `{aeon_name}=={aeon_ver}` and `{bokeh_name}=={bokeh_ver}` with
`pip download --no-deps` into a temporary directory; no other network access.

| file | rows | shape per row | classes |
|---|---|---|---|
{table}

## UCR/UEA time-series classification sets (`.ts`, sktime format)

Source: the `{aeon_name}` wheel, version {aeon_ver} (`{aeon_wheel}`, sha256 `{aeon_sha}`), files
`aeon/datasets/data/<Name>/<Name>_{{TRAIN,TEST}}.ts`, copied byte for byte.
Licence: BSD-3-Clause (aeon); the notice is in `LICENSES/aeon-BSD-3-Clause.txt`. The data sets come
from the UEA & UCR Time Series Classification Repository (timeseriesclassification.com); cite
Bagnall et al. (2018) "The UEA multivariate time series classification archive" (BasicMotions) and
Dau et al. (2019) "The UCR time series archive" (ItalyPowerDemand) when publishing results.

* `BasicMotions/`: smart-watch accelerometer + gyroscope (6 channels, 100 steps at 10 Hz) of four
  activities. Every good classifier reaches 1.00 test accuracy.
* `ItalyPowerDemand/`: 24 hourly values of Italian electricity demand; winter (Oct–Mar, class 1)
  vs summer (Apr–Sep, class 2) days. Published deep models (ResNet, FCN, InceptionTime) score
  0.95–0.97 test accuracy. Univariate, so `n_features = 1`.

moola reads them with `moola::data::read_ts` (x is time-major `[N, T, F]`, F = dimensions).

## Daily OHLC bars (`ohlc/stocks_daily.csv`)

Source: the `{bokeh_name}` wheel, version {bokeh_ver} (`{bokeh_wheel}`, sha256 `{bokeh_sha}`), file
`{stocks_member}` (sha256 `{stocks_gz_sha}`), decompressed verbatim (sha256 `{stocks_sha}`).
Licence: public domain (Quandl WIKI prices; Bokeh's `datasets.json` records "Public domain",
attribution "Quandl WIKI Prices. Archived copy supplied by marketneutral on Kaggle"). Prices are
**unadjusted** (splits show as jumps); `Adj Close` is the source's adjusted close.

Columns `Ticker,Date,Open,High,Low,Close,Volume,Adj Close`; {stocks_rows} daily bars:
{stocks_counts}.
`moola::data::windows_from_ohlc_csv` slices it into `[N, 105, 4]` OHLC windows (ids
`<ticker>:<first date>`, never crossing tickers).

## Labelled OHLC windows (`ohlc/windows.parquet`)

A demo of moola's full training contract on real prices: columns `window_id` (string),
`label` (string), `features` (nested list<list<double>>, 105 bars × [open, high, low, close], raw
unnormalised prices), `expansion_start`, `expansion_end` (int64, absolute bar indices).
**The labels are derived by a fixed rule, not by an expert**; they exercise the data path,
the classifiers and the pointer heads, they are not chart-pattern labels.

Made from `ohlc/stocks_daily.csv` by `make_windows` in the script:

* per ticker (bars in file order), a 105-bar window starts every {stride} bars; window_id is
  `<ticker>:<date of bar 0>`;
* label `up` if close[74] > close[30], `down` if close[74] < close[30] (sign of the move over the
  inner window, bars 30..74); {flat} windows with close[74] == close[30] are dropped;
* `expansion_start`/`expansion_end` = the bars i < j in [30, 74] of the largest rise
  close[j] − close[i] (for `up`) or the largest fall (for `down`) inside the inner window
  (ties: smallest i, then smallest j), so every row passes `validate_expansions`;
* {split} windows containing a stock split (Adj Close / Close changes by more than 1.5× between
  consecutive bars) are dropped.

Result: {windows_rows} windows, classes {windows_counts}; expansion length (end − start) min
{span_min}, median {span_median}, max {span_max} bars.
Licence: public domain, like its source.
"""


def main() -> None:
    repo = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=repo / "datasets")
    args = parser.parse_args()
    out: Path = args.out

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        aeon_whl = download(AEON, tmp)
        bokeh_whl = download(BOKEH, tmp)

        (out / "LICENSES").mkdir(parents=True, exist_ok=True)
        (out / "LICENSES" / "aeon-BSD-3-Clause.txt").write_bytes(
            read_member(aeon_whl, license_member(aeon_whl)))

        table_rows = []
        for name in UCR_SETS:
            (out / name).mkdir(parents=True, exist_ok=True)
            for split in ("TRAIN", "TEST"):
                dst = out / name / f"{name}_{split}.ts"
                dst.write_bytes(read_member(aeon_whl, f"aeon/datasets/data/{name}/{name}_{split}.ts"))
                rows, dims, length, counts = ts_summary(dst)
                table_rows.append(f"| `{name}/{dst.name}` | {rows} | {length} × {dims} | "
                                  + ", ".join(f"{k}: {v}" for k, v in counts.items()) + " |")

        (out / "ohlc").mkdir(parents=True, exist_ok=True)
        stocks_gz = read_member(bokeh_whl, STOCKS_MEMBER)
        stocks_csv = out / "ohlc" / "stocks_daily.csv"
        stocks_csv.write_bytes(gzip.decompress(stocks_gz))
        stocks = pd.read_csv(stocks_csv, dtype={"Ticker": str, "Date": str})
        stock_counts = stocks.groupby("Ticker", sort=False).agg(
            bars=("Date", "size"), first=("Date", "min"), last=("Date", "max"))
        table_rows.append(f"| `ohlc/stocks_daily.csv` | {len(stocks)} | OHLCV bar | "
                          f"{len(stock_counts)} tickers |")

        windows, dropped = make_windows(stocks)
        windows_path = out / "ohlc" / "windows.parquet"
        write_windows(windows, windows_path)
        counts = windows["label"].value_counts().sort_index().to_dict()
        spans = (windows["expansion_end"] - windows["expansion_start"]).to_numpy()
        table_rows.append(f"| `ohlc/windows.parquet` | {len(windows)} | 105 × 4 | "
                          + ", ".join(f"{k}: {v}" for k, v in counts.items()) + " |")

        readme = README.format(
            aeon_name=AEON[0], aeon_ver=AEON[1], aeon_wheel=aeon_whl.name, aeon_sha=sha256(aeon_whl),
            bokeh_name=BOKEH[0], bokeh_ver=BOKEH[1], bokeh_wheel=bokeh_whl.name,
            bokeh_sha=sha256(bokeh_whl), stocks_member=STOCKS_MEMBER,
            stocks_gz_sha=hashlib.sha256(stocks_gz).hexdigest(), stocks_sha=sha256(stocks_csv),
            stocks_rows=len(stocks),
            stocks_counts=", ".join(f"{t} {r.bars} ({r.first} to {r.last})"
                                    for t, r in stock_counts.iterrows()),
            table="\n".join(table_rows), stride=STRIDE, flat=dropped["flat"],
            split=dropped["split"], windows_rows=len(windows),
            windows_counts=", ".join(f"{k}: {v}" for k, v in counts.items()),
            span_min=int(spans.min()), span_median=int(np.median(spans)), span_max=int(spans.max()),
        )
        (out / "README.md").write_text(readme)

    ours = [out / "README.md", out / "LICENSES", out / "ohlc"] + [out / name for name in UCR_SETS]
    total = sum(f.stat().st_size for p in ours for f in ([p] if p.is_file() else p.rglob("*"))
                if f.is_file())
    print(f"wrote {out} ({total / 1e6:.2f} MB in the files above)")
    for line in table_rows:
        print(line)


if __name__ == "__main__":
    main()
