#!/usr/bin/env bash
# GPU checks of the backbones: CUDA tests, then the d=24 anchor bench, eager and compiled.
# Usage: OUT=results_dir bash benchmarks/gpu_backbones.sh   (diffusers must be importable; extra
# packages can sit in ./.carry, which is put on PYTHONPATH)
set -u
OUT=${OUT:-.}
export PYTHONPATH=$PWD:$PWD/.carry${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PY:-python3}
$PY -c "import torch, diffusers; print(torch.__version__, diffusers.__version__, torch.cuda.get_device_name())"
$PY -m pytest -q -m gpu -p no:cacheprovider tests/test_backbones_gpu.py 2>&1 | tail -n 15
$PY benchmarks/bench_backbones.py --preset sd3-gpu --json "$OUT/bench_eager.json"
$PY benchmarks/bench_backbones.py --preset sd3-gpu --compile --json "$OUT/bench_compile.json"
