#!/usr/bin/env bash
# Regenerates datasets/fashion-mnist-reid/market1501 from the Debian package dataset-fashion-mnist
# (see datasets/fashion-mnist-reid/README.md for the rule). Run from the repository root:
#
#     tools/data/fashion_mnist_reid.sh
#
# Needs apt-get (Debian/Ubuntu with the Debian archive configured), dpkg-deb and cargo.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

(cd "$work" && apt-get download dataset-fashion-mnist)
deb="$(ls "$work"/dataset-fashion-mnist_*.deb)"
echo "package: $(basename "$deb")"
sha256sum "$deb"
dpkg-deb -x "$deb" "$work/extracted"

cd "$repo_root"
cargo run --release -p reid -- convert-fashion-mnist --src "$work/extracted" --out datasets/fashion-mnist-reid
