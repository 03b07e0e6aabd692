# rfsweep — every target installs what it needs first (`make install` creates .venv).
PY      ?= .venv/bin/python
STAMP   := .venv/.installed
RESULTS ?=
OUT     ?=
ARGS    ?=

.PHONY: install bench-data test test-fast test-long test-cluster test-slow test-all demo demo-mmdit run rank-table bench bench-cli bench-bootstrap bench-posthoc lint gpu-check train-clip formulations docs clean

install: $(STAMP)
$(STAMP): pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -e '.[dev,docs]'
	touch $(STAMP)

test: $(STAMP)                     ## the CI suite: CPU, < 15 min on 2 cores
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile --durations=15

test-fast: $(STAMP)                ## the contributors' inner loop: every test that starts no process (marker e2e)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile -m 'not e2e and not slow and not gpu and not cluster and not long'

test-long: $(STAMP)                ## end-to-end tests of a minute or more each (several processes, whole sweeps)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile -m long

test-cluster: $(STAMP)            ## sweeps on a real one-node SLURM started here (root; < 10 min on 2 cores)
	bash scripts/slurm_local.sh up
	OMP_NUM_THREADS=1 $(PY) -m pytest -m cluster tests/cluster -p no:cacheprovider -s; \
	  status=$$?; bash scripts/slurm_local.sh down; exit $$status

test-slow: $(STAMP)                ## tests marked slow
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile -m slow

test-all: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile -m 'not gpu and not cluster'

formulations: $(STAMP)             ## docs/formulations.png: the 61 formulations as they train, beside the paper (~15 s)
	$(PY) -m analysis formulations --out analysis_out/formulations
	cp analysis_out/formulations/formulations.png docs/formulations.png

run: $(STAMP)                      ## one run on the embedded default (a few minutes on a CPU)
	$(PY) -m rfsweep $(ARGS)

demo: $(STAMP)                     ## the 122-job formulation grid on colour_digits + shapes, then Tables 1-2
	@start=$$(date +%s); OMP_NUM_THREADS=1 $(PY) -m rfsweep +experiment=demo -m $(ARGS) && \
	  echo "demo grid: $$(( $$(date +%s) - start )) s"
	$(PY) -m analysis rank-table --results multirun/demo $(if $(OUT),--out $(OUT),)

demo-mmdit: $(STAMP)               ## the same grid with a tiny MM-DiT (slower; reports its time)
	@start=$$(date +%s); OMP_NUM_THREADS=1 $(PY) -m rfsweep +experiment=demo_mmdit -m $(ARGS) && \
	  echo "demo-mmdit grid: $$(( $$(date +%s) - start )) s"
	$(PY) -m analysis rank-table --results multirun/demo_mmdit $(if $(OUT),--out $(OUT),)

rank-table: $(STAMP)               ## Tables 1-2 and Fig. 3: make rank-table RESULTS=<sweep dir or csv> OUT=<dir>
	$(PY) -m analysis rank-table $(if $(RESULTS),--results $(RESULTS),) $(if $(OUT),--out $(OUT),) $(ARGS)

bench: $(STAMP)                    ## rfsweep MM-DiT vs diffusers SD3Transformer2DModel, one training step
	OMP_NUM_THREADS=2 $(PY) benchmarks/bench_backbones.py $(ARGS)

bench-cli: $(STAMP)                ## how soon --help and the 122-job dry run answer, against import torch (N=5 each)
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_cli.py $(ARGS)

bench-bootstrap: $(STAMP)          ## the rank-confidence bootstrap at the demo's scale (122 runs x 12 settings, B=1000)
	OMP_NUM_THREADS=2 $(PY) benchmarks/bench_bootstrap.py $(ARGS)

bench-posthoc: $(STAMP)            ## post-hoc EMA reconstruction: disk and time for 50 M parameters, 20 snapshots
	OMP_NUM_THREADS=2 $(PY) benchmarks/bench_posthoc.py $(ARGS)

bench-data: $(STAMP)               ## items/s of the pre-encoded training loader, SD3-shaped items, 2 workers
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_data.py $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check rfsweep analysis tests benchmarks hydra_plugins

gpu-check:                         ## on a CUDA machine: GPU tests and the GPU benchmark in one go
	bash scripts/gpu_check.sh

docs: $(STAMP)                     ## the documentation site (mkdocs-material) into site/, strictly: any warning fails it
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

train-clip: $(STAMP)               ## retrain the embedded CLIP evaluator shipped in rfsweep/assets
	$(PY) -m rfsweep.cli.train_clip $(ARGS)

clean:
	rm -rf runs multirun outputs .pytest_cache
