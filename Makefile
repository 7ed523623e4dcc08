# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing and install torch, the package and its compiled extension.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.lrrobust-installed
TEST_STAMP := $(VENV)/.lrrobust-installed-test
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# Fails the build when the compiled CPU kernel did not come with it.
CHECK_EXTENSION := $(PY) -c "import lrrobust.ops as o; assert o.kernel_available('cpu'), 'compiled CPU kernel missing'; print('lrrobust extension:', o.build_info())"
EXT_SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh) setup.py pyproject.toml

# The test build compiles the CUDA kernels for sm_90 only (the cubins tests/test_sass_count.py reads; the kernels'
# logic runs in the CPU emulator), plus the local GPU's own architecture when there is one.
GPU_ARCH := $(shell nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1)
TEST_CUDA_ARCH_LIST ?= $(if $(filter-out 9.0,$(GPU_ARCH)),9.0;$(GPU_ARCH),9.0)
# Tests run in parallel, one process per core (pytest-xdist), each on one torch thread (tests/conftest.py).
TEST_WORKERS ?= auto
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

.PHONY: install install-test test test-fast demo bench lint clean

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
	$(CHECK_EXTENSION)
	touch $@

install: $(STAMP)

# The tests' build: an up-to-date full build (make install, make demo) serves as it is; otherwise the package is built
# with TEST_CUDA_ARCH_LIST, and the full build's stamp is removed, so make demo or make install rebuilds the default.
$(TEST_STAMP): $(VENV)/.torch-installed $(EXT_SOURCES)
	@if [ -f $(STAMP) ] && [ -z "$$(find $(EXT_SOURCES) $(VENV)/.torch-installed -newer $(STAMP))" ]; then \
		echo "lrrobust: the installed full build serves the tests"; \
	else \
		rm -f $(STAMP); \
		$(PIP) install --quiet $(TORCH_PINS) ninja setuptools wheel && \
		TORCH_CUDA_ARCH_LIST="$(TEST_CUDA_ARCH_LIST)" $(PIP) install --no-build-isolation --quiet -e ".[test]" && \
		$(CHECK_EXTENSION) || exit 1; \
	fi
	touch $@

install-test: $(TEST_STAMP)

test: install-test
	$(PYTEST) tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; \
	$(PY) csrc/cuda/sass_count.py || true; exit $$rc  # static SASS counts: a report, never a pass/fail

# The edit-test loop: every test not marked slow.
test-fast: install-test
	$(PYTEST) -m "not slow" tests

demo: install
	$(VENV)/bin/lrrobust demo

bench: install
	$(VENV)/bin/lrrobust bench op --device cpu

lint: install
	$(VENV)/bin/ruff check lrrobust tests

clean:
	rm -rf build *.egg-info lrrobust/*.so $(STAMP) $(TEST_STAMP)
