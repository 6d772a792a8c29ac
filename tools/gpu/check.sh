#!/usr/bin/env bash
# One-shot GPU check of the CUDA build: run from anywhere on a machine with an NVIDIA GPU,
# after building the release binaries:
#
#     cargo build --release --features cuda -p moola -p reid
#     tools/gpu/check.sh                     # log also in ${OUT:-/tmp}/gpu_check.log
#
# The same check runs on the wgpu build (`DEVICE=wgpu`, binaries built with `--features wgpu`),
# e.g. as a dry run on Mesa's software Vulkan (lavapipe) with small sizes:
#
#     cargo build --features wgpu -p kiln -p moola -p reid --bins
#     DEVICE=wgpu BIN_DIR=target/debug BENCH_STEPS=1 BENCH_BATCH=16 REID_BENCH_ARGS="--p 2 --k 2 \
#         --height 64 --width 32 --model resnet18 --embed-batch 8" DDP_EPOCHS=1 \
#         CHECK_BUDGET_S=2400 MOOLA_BENCH_S=1500 REID_BENCH_S=600 DDP_S=240 tools/gpu/check.sh
#
# Without nvidia-smi (wgpu) the GPU listing and the memory sampling (d) are skipped, not failed.
#
# Sections (each under `timeout`; the whole script stays under CHECK_BUDGET_S, default 450 s,
# plus at most 10 s to kill a hung command):
#   a. GPUs, driver, CUDA as the binaries see it
#   b. moola bench: SimpleLSTM, CNN-Transformer, RWKV-TS at batch 512 in 32 / 16-mixed /
#      bf16-mixed (step time and the loss after the timed steps next to f32's)
#   c. reid bench: ResNet50 CTL step (P=16, K=4, 256×128) and embedding images/s in the 3 modes
#   d. peak GPU memory of every run above (and of e), above the idle baseline, per GPU
#   e. DDP: `moola train --devices 0..N-1` on every visible GPU, or with one GPU two nodes
#      (`--num-nodes 2`) on cuda:0 over 127.0.0.1
# A failing section is reported and the next one still runs; the exit status is 1 if any failed.
#
# Environment: OUT (log directory, default /tmp), BIN_DIR (default target/release),
# CHECK_BUDGET_S (default 450), BENCH_STEPS (default 20), DEVICE (cuda or wgpu, default cuda),
# PRECISIONS (default 32,16-mixed,bf16-mixed on cuda, 32,16-mixed on wgpu: WGSL has no bf16),
# BENCH_BATCH (moola bench batch, default 512), REID_BENCH_ARGS (extra `reid bench` flags, e.g. a
# smaller --p/--k/--height/--width, default none), DDP_EPOCHS (default 20), and the sections' own
# limits MOOLA_BENCH_S (b, default 160), REID_BENCH_S (c, default 200), DDP_S (e, default 100):
# raise them (and CHECK_BUDGET_S) where kernels are slow to autotune, as on lavapipe.

set -u
set -o pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
ROOT=$PWD
OUT_DIR=${OUT:-/tmp}
mkdir -p "$OUT_DIR"
LOG=$OUT_DIR/gpu_check.log
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!

BIN_DIR=${BIN_DIR:-target/release}
BUDGET=${CHECK_BUDGET_S:-450}
STEPS=${BENCH_STEPS:-20}
DEVICE=${DEVICE:-cuda}
case $DEVICE in
    cuda*) BACKEND=cuda DEVICE0=cuda:0 DEFAULT_PRECISIONS=32,16-mixed,bf16-mixed ;;
    wgpu*) BACKEND=wgpu DEVICE0=$DEVICE DEFAULT_PRECISIONS=32,16-mixed ;;
    *)
        echo "DEVICE must be cuda, cuda:N, wgpu or wgpu:N (got $DEVICE)"
        exit 1
        ;;
esac
PRECISIONS=${PRECISIONS:-$DEFAULT_PRECISIONS}
BATCH=${BENCH_BATCH:-512}
DDP_EPOCHS=${DDP_EPOCHS:-20}
MOOLA_BENCH_S=${MOOLA_BENCH_S:-160}
REID_BENCH_S=${REID_BENCH_S:-200}
DDP_S=${DDP_S:-100}
# shellcheck disable=SC2206 # word splitting of the extra flags is intended
REID_EXTRA=(${REID_BENCH_ARGS:-})
# nvidia-smi (GPU listing, memory sampling) on CUDA only.
HAVE_SMI=0
if [[ $BACKEND == cuda ]]; then HAVE_SMI=1; fi
START=$SECONDS
TMP=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
declare -a SUMMARY=()
FAILED=0
SAMPLER_PID=

cleanup() {
    if [[ -n $SAMPLER_PID ]]; then kill "$SAMPLER_PID" 2>/dev/null; fi
    rm -rf "$TMP"
    # Let tee write the last lines before the script returns.
    exec 1>&- 2>&-
    wait "$TEE_PID" 2>/dev/null
}
trap cleanup EXIT

banner() { printf '\n==================== %s ====================\n' "$*"; }

# Seconds left of the whole budget.
left() { echo $((BUDGET - (SECONDS - START))); }

# min(want, time left - 5): the limit for the next command; 0 when too little time is left.
limit_for() {
    local want=$1 l
    l=$(($(left) - 5))
    if ((l < 15)); then echo 0; elif ((want < l)); then echo "$want"; else echo "$l"; fi
}

record() { # section status seconds
    SUMMARY+=("$(printf '%-42s %-22s %5ss' "$1" "$2" "$3")")
    case $2 in ok*) ;; *) FAILED=1 ;; esac
}

describe_rc() {
    case $1 in
        0) echo ok ;;
        124 | 137) echo "FAILED (timed out)" ;;
        *) echo "FAILED (exit $1)" ;;
    esac
}

# ---- GPU memory sampling (section d) ----
declare -a PEAKS=()
# shellcheck disable=SC2054 # the commas are nvidia-smi's
QUERY=(--query-gpu=index,memory.used --format=csv,noheader,nounits)

start_sampler() {
    ((HAVE_SMI)) || return 0
    nvidia-smi "${QUERY[@]}" >"$TMP/base.txt" 2>/dev/null
    nvidia-smi "${QUERY[@]}" -lms 100 >"$TMP/mem.txt" 2>/dev/null &
    SAMPLER_PID=$!
}

# Stops the sampler and prints the run's peak memory per GPU next to the idle baseline.
stop_sampler() { # label
    if [[ -n $SAMPLER_PID ]]; then
        kill "$SAMPLER_PID" 2>/dev/null
        wait "$SAMPLER_PID" 2>/dev/null
        SAMPLER_PID=
    fi
    local peaks line
    if ((!HAVE_SMI)); then
        PEAKS+=("$1:" "    (not sampled: no nvidia-smi on $BACKEND)")
        return 0
    fi
    peaks=$(awk -F, '
        { gsub(/ /, "") }
        NR == FNR { base[$1] = $2; next }
        NF == 2 && $2 ~ /^[0-9]+$/ && (!($1 in max) || $2 + 0 > max[$1]) { max[$1] = $2 + 0 }
        END {
            for (i in max)
                printf "GPU %s: peak %d MiB, %d MiB above the idle %d MiB\n",
                    i, max[i], max[i] - base[i], base[i]
        }' "$TMP/base.txt" "$TMP/mem.txt" | sort)
    PEAKS+=("$1:")
    if [[ -z $peaks ]]; then
        PEAKS+=("    (no memory samples)")
    else
        while IFS= read -r line; do PEAKS+=("    $line"); done <<<"$peaks"
    fi
    printf -- '--- peak GPU memory (%s) ---\n%s\n' "$1" "${peaks:-(no memory samples)}"
}

# run_step LABEL WANT_SECONDS cmd... : runs one command under timeout with memory sampling.
run_step() {
    local label=$1 want=$2 lim rc t0
    shift 2
    lim=$(limit_for "$want")
    banner "$label"
    if ((lim == 0)); then
        echo "skipped: the ${BUDGET}s budget is spent"
        record "$label" "FAILED (no time left)" 0
        return 1
    fi
    echo "\$ timeout ${lim}s $*"
    t0=$SECONDS
    start_sampler
    timeout --kill-after=10 "$lim" "$@"
    rc=$?
    stop_sampler "$label"
    record "$label" "$(describe_rc "$rc")" $((SECONDS - t0))
    return "$rc"
}

# ---- preconditions ----
missing=0
if ((HAVE_SMI)) && { ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >"$TMP/gpus.txt" 2>&1 ||
    ! grep -q '^GPU ' "$TMP/gpus.txt"; }; then
    echo "no NVIDIA GPU found: nvidia-smi is missing or lists no GPU; this check needs a CUDA machine"
    missing=1
fi
for b in moola reid; do
    if [[ ! -x $BIN_DIR/$b ]]; then
        echo "missing $BIN_DIR/$b"
        missing=2
    fi
done
if ((missing == 2)); then
    echo "build the $BACKEND binaries first (the check does not build), from $ROOT:"
    echo "    cargo build --release --features $BACKEND -p moola -p reid"
fi
if ((missing)); then
    echo "gpu check not run (log: $LOG)"
    exit 1
fi
MOOLA=$ROOT/$BIN_DIR/moola
REID=$ROOT/$BIN_DIR/reid
[[ $BIN_DIR == /* ]] && MOOLA=$BIN_DIR/moola && REID=$BIN_DIR/reid
if ((HAVE_SMI)); then NGPU=$(grep -c '^GPU ' "$TMP/gpus.txt"); else NGPU=1; fi
echo "gpu check: $(date -u '+%F %T') UTC, device $DEVICE, repo $ROOT ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')), budget ${BUDGET}s, log $LOG"

# ---- a. devices ----
banner "a. GPUs and driver"
t0=$SECONDS
rc=0
if ((HAVE_SMI)); then
    timeout 20 nvidia-smi -L || rc=$?
    timeout 20 nvidia-smi --query-gpu=index,name,driver_version,memory.total,compute_cap \
        --format=csv || rc=$?
    timeout 20 nvidia-smi | sed -n '1,4p' || true
else
    echo "(no nvidia-smi on $BACKEND: the adapters are the doctors' lists below)"
fi
echo "--- moola doctor (backends, CUDA driver and wgpu adapters as the binary sees them) ---"
timeout 60 "$MOOLA" --device "$DEVICE" doctor >"$TMP/doctor.txt" 2>&1 || rc=$?
sed '/--- resolved configuration ---/q' "$TMP/doctor.txt" | grep -v -- '--- resolved'
echo "--- reid doctor ---"
timeout 60 "$REID" --device "$DEVICE" doctor || rc=$?
record "a. GPUs and driver" "$(describe_rc "$rc")" $((SECONDS - t0))

# ---- b. moola bench ----
run_step "b. moola bench (batch $BATCH)" "$MOOLA_BENCH_S" \
    "$MOOLA" --device "$DEVICE" bench --models simple_lstm,cnn_transformer,rwkv_ts \
    --batch-size "$BATCH" --steps "$STEPS" --warmup 3 --precisions "$PRECISIONS" --no-torch \
    --json "$OUT_DIR/gpu_check_moola_bench.json"

# ---- c. reid bench ----
if ((${#REID_EXTRA[@]})); then reid_label="c. reid bench (${REID_EXTRA[*]})"; else
    reid_label="c. reid bench (ResNet50 P16 K4 256x128)"
fi
run_step "$reid_label" "$REID_BENCH_S" \
    "$REID" --device "$DEVICE" bench --steps "$STEPS" --warmup 2 --precisions "$PRECISIONS" \
    --no-torch --json "$OUT_DIR/gpu_check_reid_bench.json" "${REID_EXTRA[@]}"

# ---- e. DDP ----
DATA=$ROOT/datasets/BasicMotions
train_args=(train --model simple_lstm --quiet --data "$DATA/BasicMotions_TRAIN.ts"
    --test "$DATA/BasicMotions_TEST.ts")
if ((NGPU >= 2)); then
    devs=$(seq -s, 0 $((NGPU - 1)))
    run_step "e. DDP on $NGPU GPUs (--devices $devs)" "$DDP_S" \
        "$MOOLA" --device "$DEVICE" --devices "$devs" "${train_args[@]}" --out "$TMP/ddp" \
        simple_lstm.train.n_epochs "$DDP_EPOCHS"
else
    label="e. DDP, 2 nodes on $DEVICE0"
    lim=$(limit_for "$DDP_S")
    banner "$label"
    if ((lim == 0)); then
        echo "skipped: the ${BUDGET}s budget is spent"
        record "$label" "FAILED (no time left)" 0
    else
        # A port whose next two (the nodes' data ports) are free too.
        port=
        for _ in $(seq 20); do
            p=$((20000 + RANDOM % 20000))
            busy=0
            for q in $p $((p + 1)) $((p + 2)); do
                if (exec 3<>"/dev/tcp/127.0.0.1/$q") 2>/dev/null; then busy=1; fi
            done
            if ((busy == 0)); then port=$p && break; fi
        done
        port=${port:-29500}
        t0=$SECONDS
        start_sampler
        pids=()
        for rank in 0 1; do
            echo "\$ timeout ${lim}s moola --device $DEVICE0 --num-nodes 2 --node-rank $rank --orchestrator 127.0.0.1:$port --dist-timeout 60 ${train_args[*]} --out $TMP/mn simple_lstm.train.n_epochs $DDP_EPOCHS"
            timeout --kill-after=10 "$lim" "$MOOLA" --device "$DEVICE0" --num-nodes 2 \
                --node-rank "$rank" --orchestrator "127.0.0.1:$port" --dist-timeout 60 \
                "${train_args[@]}" --out "$TMP/mn" simple_lstm.train.n_epochs "$DDP_EPOCHS" \
                >"$TMP/rank$rank.log" 2>&1 &
            pids+=($!)
        done
        rc0=0 rc1=0
        wait "${pids[0]}" || rc0=$?
        wait "${pids[1]}" || rc1=$?
        stop_sampler "$label"
        echo "rank 0 exit code: $rc0"
        echo "rank 1 exit code: $rc1"
        echo "--- rank 0 output (last 25 lines) ---"
        tail -n 25 "$TMP/rank0.log"
        if ((rc1 != 0)); then
            echo "--- rank 1 output (last 25 lines) ---"
            tail -n 25 "$TMP/rank1.log"
        fi
        rc=$rc0
        ((rc == 0)) && rc=$rc1
        record "$label" "$(describe_rc "$rc")" $((SECONDS - t0))
    fi
fi

# ---- d. memory summary and overall result ----
banner "d. peak GPU memory per run (above the idle baseline)"
printf '%s\n' "${PEAKS[@]}"

banner "summary ($((SECONDS - START))s of ${BUDGET}s)"
printf '%s\n' "${SUMMARY[@]}"
if ((FAILED)); then
    echo "RESULT: FAILED (see the sections above; log: $LOG)"
    exit 1
fi
echo "RESULT: all sections passed (log: $LOG)"
