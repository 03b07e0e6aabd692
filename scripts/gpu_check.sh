#!/usr/bin/env bash
# The GPU check, one call on a lent CUDA machine (see README "GPU check"), in order of importance:
#   1. the CUDA tests (pytest -m gpu): backbones in bf16 and against diffusers, formulations under autocast,
#      the conditioner's table on the GPU;
#   2. an end-to-end run of `python -m rfsweep trainer=gpu` (bf16, torch.compile as configured: train, validate,
#      sample, evaluate);
#   3. the training-step benchmark, rfsweep MM-DiT vs diffusers SD3Transformer2DModel at the d=24 anchor: eager,
#      compiled, compiled with the cuDNN attention kernel, and the 30 costliest kernels of a compiled rfsweep step
#      (BENCH=0 skips it).
# Each stage has its own time limit so that one slow stage cannot take the others' time; the sum stays under the
# device's 10-minute call limit. Results go to $OUT (default ./gpu_out).
# Packages the GPU image lacks (hydra, omegaconf, antlr4, open_clip, ftfy, wcwidth, diffusers) travel as pure-Python
# folders in ./.carry (scripts/build_carry.sh copies them from .venv), put on PYTHONPATH.
# Device call: command "OUT=$OUT bash scripts/gpu_check.sh", carry [".carry"].
# DEVICE=cpu runs every stage at toy sizes on a CPU (the script's own test, tests/test_gpu_check.py).
set -u
OUT=${OUT:-gpu_out}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:$PWD/.carry${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 WANDB_MODE=offline
export RFSWEEP_CACHE=${RFSWEEP_CACHE:-/tmp/rfsweep-cache}
PY=${PY:-python3}
RUNS=${RUNS:-/tmp/gpu_runs}
if [ "$DEVICE" = cuda ]; then
  E2E="trainer=gpu optimizer=adamw ema=paper backbone.depth=4 backbone.width=256 backbone.heads=4 trainer.max_steps=${STEPS:-300}
       trainer.batch_size=256 trainer.val_every=100 trainer.ckpt_every=100 trainer.n_val=512 trainer.num_workers=4
       optimizer.lr=3e-4 eval.n_samples=500 eval.batch_size=500"
  BENCH_ARGS="--preset sd3-gpu"
  SDPA=cudnn
  T_TESTS=80 T_E2E=150 T_BENCH=(60 170 70 40)  # 570 s in all; two d=24 compiles need the most
else
  E2E="trainer=gpu optimizer=adamw ema=paper trainer.accelerator=cpu trainer.compile=false backbone.depth=1 backbone.width=32 backbone.heads=2
       trainer.max_steps=${STEPS:-4} trainer.batch_size=8 trainer.val_every=2 trainer.ckpt_every=2 trainer.n_val=8
       trainer.num_workers=0 trainer.warmup_steps=1 eval.n_samples=16 eval.batch_size=16 eval.settings=[[2,1.0]]
       eval.weights=[ema] sampler.n_grid=4"
  BENCH_ARGS="--device cpu --dtype bf16 --steps 2 --warmup 1"
  SDPA=flash  # the CPU has no cuDNN kernel
  T_TESTS=300 T_E2E=300 T_BENCH=(120 300 300 300)
fi
stage() { # stage SECONDS NAME COMMAND...: run with a time limit, report its time and exit status
  local limit=$1 name=$2 start=$(date +%s) rc
  shift 2
  timeout "$limit" "$@"
  rc=$?
  echo "stage $name: rc=$rc seconds=$(( $(date +%s) - start ))$( [ $rc = 124 ] && echo " (time limit $limit s)")"
}

$PY -c "import torch, lightning, diffusers, hydra, open_clip; print('torch', torch.__version__, 'lightning',
lightning.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"

echo "== 1. CUDA tests"
stage $T_TESTS tests bash -c "$PY -m pytest -q -m gpu -p no:cacheprovider -o addopts='' tests/test_backbones_gpu.py \
  tests/test_formulations_gpu.py tests/test_conditioning.py 2>&1 | tail -n 15"

echo "== 2. end-to-end run of python -m rfsweep trainer=gpu"
stage $T_E2E e2e bash -c "$PY -m rfsweep $(echo $E2E) conditioning=hash logger=csv data=shapes backbone=mmdit \
  paths.runs=$RUNS name=gpu_check > '$OUT/e2e.log' 2>&1"
grep -E "^(done|skip|error|failed|pre-empted)|Error" "$OUT/e2e.log" | tail -n 5
run=$(dirname "$(find "$RUNS" -name results.csv 2>/dev/null | head -n 1)")
for f in results.csv metrics.csv samples.png status.json model.json; do cp "$run/$f" "$OUT/e2e_$f" 2>/dev/null; done
cut -d, -f1-12 "$OUT/e2e_results.csv" 2>/dev/null
grep -E '"(peak_gpu_bytes|planned_gpu_bytes|planned)"' "$OUT/e2e_model.json" 2>/dev/null  # memory plan vs measured

if [ "${BENCH:-1}" = "1" ]; then
  echo "== 3. benchmark: rfsweep MM-DiT vs diffusers ($BENCH_ARGS)"
  stage ${T_BENCH[0]} bench-eager bash -c "$PY benchmarks/bench_backbones.py $BENCH_ARGS --json '$OUT/bench_eager.json' 2>&1 | tail -n 4"
  stage ${T_BENCH[1]} bench-compile bash -c "$PY benchmarks/bench_backbones.py $BENCH_ARGS --compile \
    --json '$OUT/bench_compile.json' 2>&1 | tail -n 4"
  stage ${T_BENCH[2]} bench-compile-$SDPA bash -c "$PY benchmarks/bench_backbones.py $BENCH_ARGS --compile --sdpa $SDPA \
    --impls rfsweep --json '$OUT/bench_compile_$SDPA.json' 2>&1 | tail -n 4"
  stage ${T_BENCH[3]} profile bash -c "$PY benchmarks/bench_backbones.py $BENCH_ARGS --compile --impls rfsweep --steps 2 \
    --profile 30 > '$OUT/profile_compiled.txt' 2>&1; tail -n 3 '$OUT/profile_compiled.txt'"
fi
