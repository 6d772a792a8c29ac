#!/usr/bin/env python3
"""Reads a kiln run's TensorBoard event file(s) with TensorBoard's own reader.

Usage: check_events.py RUN_DIR [--expect TAG ...]

Loads RUN_DIR with tensorboard.backend.event_processing.event_accumulator.EventAccumulator
(the reader `tensorboard --logdir` uses), prints every scalar tag with its number of points and
its first and last (step, value), and exits non-zero when the directory holds no scalars, when a
tag named with --expect is missing, or when steps of a tag go backwards within one file.

Needs the `tensorboard` pip package (not a dependency of the project; not run in CI):

    python3 -m venv /tmp/venv-tb && /tmp/venv-tb/bin/pip install tensorboard
    /tmp/venv-tb/bin/python tools/tensorboard/check_events.py path/to/run --expect step/loss
"""

import argparse
import glob
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--expect", action="append", default=[], metavar="TAG")
    args = parser.parse_args()

    from tensorboard.backend.event_processing import event_accumulator

    files = sorted(glob.glob(os.path.join(args.run_dir, "events.out.tfevents.*")))
    if not files:
        print(f"error: no events.out.tfevents.* file in {args.run_dir}", file=sys.stderr)
        return 1
    failures = []
    seen = set()
    for path in files:
        acc = event_accumulator.EventAccumulator(
            path, size_guidance={event_accumulator.SCALARS: 0}
        )
        acc.Reload()
        tags = acc.Tags()["scalars"]
        print(f"{path}: file_version {acc.file_version!r}, {len(tags)} scalar tags")
        # TensorBoard parses the "brain.Event:2" of the first record into the number 2.0.
        if acc.file_version != 2.0:
            failures.append(f"{path}: file_version {acc.file_version!r}")
        for tag in sorted(tags):
            points = acc.Scalars(tag)
            seen.add(tag)
            first, last = points[0], points[-1]
            print(
                f"  {tag:32s} {len(points):6d} points  "
                f"first (step {first.step}, {first.value:.6g})  "
                f"last (step {last.step}, {last.value:.6g})"
            )
            steps = [p.step for p in points]
            if any(b < a for a, b in zip(steps, steps[1:])):
                failures.append(f"{path}: steps of {tag} go backwards")
    if not seen:
        failures.append("no scalars at all")
    for tag in args.expect:
        if tag not in seen:
            failures.append(f"missing tag {tag}")
    for f in failures:
        print(f"error: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
