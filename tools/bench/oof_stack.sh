#!/usr/bin/env bash
# The OOF + stacking table of moola: out-of-fold accuracy, macro F1 and ECE of every base model,
# of the random-forest stack, and the audit verdict, on a labelled window set; prints the time of
# the whole `oof` + `stack` run.
#
#   tools/bench/oof_stack.sh [DATA] [MODELS] [KEY VALUE ...]
#
# DATA defaults to the bundled datasets/ohlc/windows.parquet; MODELS (comma-separated) to the
# classical baselines plus SimpleLSTM. Extra KEY VALUE overrides go to every command, e.g.
# `simple_lstm.train.n_epochs 20` for a shorter deep run. Needs a release build:
#   cargo build --release -p moola
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-datasets/ohlc/windows.parquet}
MODELS=${2:-logreg,rf,xgb,simple_lstm}
shift $(( $# > 2 ? 2 : $# ))
BIN=target/release/moola
ART=$(mktemp -d)/artifacts
trap 'rm -rf "$(dirname "$ART")"' EXIT
SECONDS=0
for m in ${MODELS//,/ }; do
  "$BIN" --quiet oof --model "$m" --data "$DATA" paths.artifacts_dir "$ART" "$@" | grep -E "^out-of-fold:" | sed "s/^/$m /"
done
"$BIN" --quiet stack --data "$DATA" paths.artifacts_dir "$ART" "$@" | grep -E "^stack"
elapsed=$SECONDS
"$BIN" --quiet audit paths.artifacts_dir "$ART" "$@" || true
echo "oof + stack wall time: ${elapsed} s ($DATA, models $MODELS)"
