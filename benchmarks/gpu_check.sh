#!/usr/bin/env bash
# One pass on a CUDA machine: install, correctness checks, then the benchmark table. Run from anywhere:
#     bash benchmarks/gpu_check.sh
# Output goes to the terminal and to $OUT/gpu_results.txt when $OUT is set (else ./gpu_results.txt).
# Every step has its own timeout and the whole script stops starting steps after $BUDGET_S seconds
# (default 530, so it ends within ~9 minutes); a failed or timed-out step does not stop the next one.
# GPU_CHECK_DRY=1 runs the same steps on the CPU with tiny sizes and no install (to test this script).
set -u
cd "$(dirname "$0")/.."
LOG="${OUT:+$OUT/gpu_results.txt}"
LOG="${LOG:-gpu_results.txt}"
mkdir -p "$(dirname "$LOG")"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
BUDGET_S="${BUDGET_S:-530}"
WORK="${BENCH_WORKDIR:-${TMPDIR:-/tmp}/facecleaner-bench}"
mkdir -p "$WORK"
FAILED=()

step() {  # step NAME TIMEOUT_S COMMAND...: run with a timeout capped by what is left of the budget
    local name=$1 limit=$2 left rc t0
    shift 2
    left=$((BUDGET_S - SECONDS))
    if ((left < 30)); then
        echo "=== SKIP $name: budget of ${BUDGET_S}s spent"
        FAILED+=("$name(skipped)")
        return
    fi
    ((limit > left)) && limit=$left
    echo "=== $name (timeout ${limit}s): $*"
    t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    echo "=== $name: rc=$rc in $((SECONDS - t0)) s"
    ((rc == 0)) || FAILED+=("$name(rc=$rc)")
}

echo "=== facecleaner gpu_check $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
    "$(git status --porcelain 2>/dev/null | grep -q . && echo '+uncommitted changes')"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
echo "CPU: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"

if [[ "${GPU_CHECK_DRY:-0}" == 1 ]]; then
    echo "DRY RUN: CPU, tiny sizes, no install"
    DEV=(--device cpu); R50=tiny; R100=tiny; CLASSES=1000; BS=16; TRAIN_STEPS=(--warmup 1 --steps 2); R100_STEPS=(--warmup 1 --steps 2)
    CHECK_STEPS=3; IMAGES=300; IDS=20; HEAD=100; CHECK_SIZE=(--check-images 64 --check-identities 4)
else
    DEV=(); R50=r50; R100=r100; CLASSES=93431; BS=256; TRAIN_STEPS=(--warmup 15 --steps 60); R100_STEPS=(--warmup 10 --steps 40)
    CHECK_STEPS=20; IMAGES=50000; IDS=1000; HEAD=93431; CHECK_SIZE=()
    # --- install: offline-safe. torch is preinstalled; if every other runtime dependency is too, no index is needed.
    if python -c "import numpy, pandas, pyarrow, PIL, tqdm, click" 2>/dev/null; then
        step install 120 pip install --quiet --no-deps --no-build-isolation -e .
    else
        step install 120 pip install --quiet --retries 1 --timeout 15 -e .
    fi
    python -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', \
torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'device', torch.cuda.get_device_name(0))" \
        || { echo "CUDA/torch not usable: stopping"; exit 1; }
fi
if ! python -c "import facecleaner.api" 2>/dev/null; then
    echo "facecleaner is not importable: using PYTHONPATH=$PWD"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

# --- correctness
step check-train 150 python benchmarks/bench_train.py "${DEV[@]}" --check --backbone $R50 --classes $CLASSES \
    --batch-size $BS --precision bf16 --check-steps $CHECK_STEPS
step check-score 150 python benchmarks/bench_score.py "${DEV[@]}" --check --backbone $R50 \
    --check-precisions auto,fp32 "${CHECK_SIZE[@]}" --workdir "$WORK/score"

# --- benchmark table (eager first; compile last, only if the budget allows)
step train-r50-bf16 120 python benchmarks/bench_train.py "${DEV[@]}" --backbone $R50 --classes $CLASSES \
    --batch-size $BS --precision bf16 "${TRAIN_STEPS[@]}"
step train-r50-bf16-nosync 90 python benchmarks/bench_train.py "${DEV[@]}" --backbone $R50 --classes $CLASSES \
    --batch-size $BS --precision bf16 "${TRAIN_STEPS[@]}" --no-step-sync
step train-r100-bf16 150 python benchmarks/bench_train.py "${DEV[@]}" --backbone $R100 --classes $CLASSES \
    --batch-size $BS --precision bf16 "${R100_STEPS[@]}"
step score-r50 180 python benchmarks/bench_score.py "${DEV[@]}" --backbone $R50 --images $IMAGES --identities $IDS \
    --head-classes $HEAD --batch-size 256 --repeat 2 --workdir "$WORK/score"
step score-r50-16workers 90 python benchmarks/bench_score.py "${DEV[@]}" --backbone $R50 --images $IMAGES \
    --identities $IDS --head-classes $HEAD --batch-size 256 --repeat 2 --workers 16 --workdir "$WORK/score"
# `facecleaner train` itself from the JPEG folder the score step generated (decoding included): img/s in the JSON
rm -rf "$WORK/run-disk"
step train-r50-from-jpeg 150 facecleaner train "$WORK/score/data_${IMAGES}_${IDS}" --out "$WORK/run-disk" --backbone $R50 \
    "${DEV[@]}" --epochs 1 --batch-size $BS --json -q
if [[ "${GPU_CHECK_DRY:-0}" != 1 ]]; then
    step train-r50-1M-ids 120 python benchmarks/bench_train.py --backbone r50 --classes 1000000 --batch-size 256 \
        --precision bf16 --warmup 3 --steps 10
    step train-r50-bf16-compile 240 python benchmarks/bench_train.py --backbone r50 --batch-size 256 \
        --precision bf16 "${TRAIN_STEPS[@]}" --compile
fi

echo "=== summary (${SECONDS}s)"
grep -h -E "^(RESULT|CHECK)" "$LOG" | sed 's/^/  /'
if ((${#FAILED[@]})); then
    echo "=== not passed: ${FAILED[*]}"
    exit 1
fi
echo "=== all steps passed"
