#!/usr/bin/env bash
# The GPU check, one call on a lent CUDA machine (see README "GPU check"):
#   1. the CUDA tests (pytest -m gpu): backbones in bf16 and against diffusers, formulations under autocast;
#   2. an end-to-end bf16 run of `python -m rfsweep` on the GPU (train, validate, sample, evaluate);
#   3. the training-step benchmark, rfsweep MM-DiT vs diffusers SD3Transformer2DModel (BENCH=0 skips it).
# Packages the GPU image lacks (hydra, omegaconf, antlr4, open_clip, ftfy, wcwidth, diffusers) travel as pure-Python
# folders in ./.carry (scripts/build_carry.sh copies them from .venv), put on PYTHONPATH. Results go to $OUT
# (default ./gpu_out). Device call: command "OUT=$OUT bash scripts/gpu_check.sh", carry [".carry"].
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:$PWD/.carry${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 WANDB_MODE=offline
export RFSWEEP_CACHE=/tmp/rfsweep-cache
PY=${PY:-python3}
STEPS=${STEPS:-300}
$PY -c "import torch, lightning, diffusers, hydra, open_clip; print('torch', torch.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name())"

echo "== 1. CUDA tests"
$PY -m pytest -q -m gpu -p no:cacheprovider -o addopts="" tests/test_backbones_gpu.py tests/test_formulations_gpu.py tests/test_conditioning.py 2>&1 | tail -n 15

echo "== 2. end-to-end bf16 run on the GPU"
start=$(date +%s)
$PY -m rfsweep trainer=gpu conditioning=hash logger=csv data=shapes backbone=mmdit backbone.depth=4 backbone.width=256 \
    backbone.heads=4 trainer.max_steps=$STEPS trainer.batch_size=256 trainer.val_every=100 trainer.ckpt_every=100 \
    trainer.n_val=512 trainer.num_workers=4 trainer.compile=false trainer.lr=3e-4 eval.n_samples=500 eval.batch_size=500 \
    paths.runs=/tmp/gpu_runs name=gpu_check 2>&1 | grep -E "^(done|error|failed)|Error" | tail -n 5
echo "end-to-end seconds: $(( $(date +%s) - start ))"
run=$(dirname "$(find /tmp/gpu_runs -name results.csv | head -n 1)")
cp "$run/results.csv" "$OUT/gpu_results.csv" 2>/dev/null && cp "$run/samples.png" "$OUT/gpu_samples.png" && cp "$run/metrics.csv" "$OUT/gpu_metrics.csv"
cat "$OUT/gpu_results.csv" 2>/dev/null | cut -d, -f5-11

if [ "${BENCH:-1}" = "1" ]; then
  echo "== 3. benchmark (d=24, 256x256, 154 text tokens, batch 64, bf16)"
  $PY benchmarks/bench_backbones.py --preset sd3-gpu --json "$OUT/bench_eager.json" 2>&1 | tail -n 8
  $PY benchmarks/bench_backbones.py --preset sd3-gpu --compile --json "$OUT/bench_compile.json" 2>&1 | tail -n 8
fi
