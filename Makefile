# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing and install torch, the package and its compiled extension.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.lrrobust-installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
EXT_SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh) setup.py pyproject.toml

.PHONY: install test demo bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch-installed: | $(PY)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	$(PIP) install --quiet $(TORCH_PINS)
	touch $@

# The extension is rebuilt whenever a C++/CUDA source changes; nvcc, when present, compiles the CUDA kernel.
$(STAMP): $(VENV)/.torch-installed $(EXT_SOURCES)
	$(PIP) install --quiet $(TORCH_PINS) ninja setuptools wheel
	$(PIP) install --no-build-isolation --quiet -e ".[test]"
	$(PY) -c "import lrrobust.ops as o; assert o.kernel_available('cpu'), 'compiled CPU kernel missing'; print('lrrobust extension:', o.build_info())"
	touch $@

install: $(STAMP)

test: install
	$(PY) -m pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; \
	$(PY) csrc/cuda/sass_count.py || true; exit $$rc  # static SASS counts: a report, never a pass/fail

demo: install
	$(VENV)/bin/lrrobust demo

bench: install
	$(VENV)/bin/lrrobust bench op --device cpu

lint: install
	$(VENV)/bin/ruff check lrrobust tests

clean:
	rm -rf build *.egg-info lrrobust/*.so $(STAMP)
