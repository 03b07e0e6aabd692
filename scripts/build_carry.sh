#!/usr/bin/env bash
# Copies the pure-Python packages the lent GPU image lacks (see scripts/gpu_check.sh) from .venv into .carry/,
# which must be ignored by git (`echo .carry/ >> .git/info/exclude`) and named in the device call's `carry`.
set -eu
SP=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
mkdir -p .carry
for p in hydra omegaconf antlr4 open_clip ftfy wcwidth diffusers; do
  rm -rf ".carry/$p" && cp -r "$SP/$p" .carry/
done
find .carry -name __pycache__ -type d -prune -exec rm -rf {} +
du -sh .carry
