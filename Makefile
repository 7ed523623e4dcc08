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

.PHONY: install install-test test-build test test-fast demo bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch's 5.5 GB of wheels unpack in two pip processes at once (tools/parallel_pip.py).
$(VENV)/.torch-installed: | $(PY)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	$(PY) tools/parallel_pip.py $(TORCH_PINS)
	touch $@

# build/requirements.txt: the package's dependencies and its test extra's, from pyproject.toml (read with the TOML
# parser of Python 3.11, or the one pip carries for older Pythons).
REQUIREMENTS := $(PY) -c "import importlib, sys; \
	toml = importlib.import_module('tomllib' if sys.version_info >= (3, 11) else 'pip._vendor.tomli'); \
	p = toml.load(open('pyproject.toml', 'rb'))['project']; \
	open('build/requirements.txt', 'w').write(''.join(r + chr(10) for r in p['dependencies'] + p['optional-dependencies']['test']))"
# The extension compiles (both cores, ninja) while pip installs the other dependencies (mostly one core and the
# index); then the editable install packages the compiled file (setup.py's LRROBUST_PREBUILT_EXTENSION) instead of
# compiling it again. ninja recompiles what changed since the last build; nvcc, when present, compiles the CUDA
# kernel. $(1): the CUDA architectures (TORCH_CUDA_ARCH_LIST), or empty for setup.py's default.
define BUILD_AND_INSTALL
	$(PIP) install --quiet $(TORCH_PINS) ninja setuptools wheel
	@mkdir -p build && $(REQUIREMENTS)
	@echo "lrrobust: compiling the extension (log: build/extension.log) while pip installs the dependencies"
	@$(if $(1),TORCH_CUDA_ARCH_LIST="$(1)") $(PY) setup.py build_ext --inplace > build/extension.log 2>&1 & build=$$!; \
	$(PIP) install --quiet $(TORCH_PINS) -r build/requirements.txt; deps=$$?; \
	if ! wait $$build; then tail -n 40 build/extension.log; echo "lrrobust: the extension did not compile (build/extension.log)"; exit 1; fi; \
	exit $$deps
	LRROBUST_PREBUILT_EXTENSION=lrrobust/_C.abi3.so $(PIP) install --no-build-isolation --no-deps --quiet -e .
	$(CHECK_EXTENSION)
endef

$(STAMP): $(VENV)/.torch-installed $(EXT_SOURCES)
	$(call BUILD_AND_INSTALL,)
	touch $@

install: $(STAMP)

# The tests' build: an up-to-date full build (make install, make demo) serves as it is; otherwise the package is built
# with TEST_CUDA_ARCH_LIST, and the full build's stamp is removed, so make demo or make install rebuilds the default.
$(TEST_STAMP): $(VENV)/.torch-installed $(EXT_SOURCES)
	@if [ -f $(STAMP) ] && [ -z "$$(find $(EXT_SOURCES) $(VENV)/.torch-installed -newer $(STAMP))" ]; then \
		echo "lrrobust: the installed full build serves the tests"; \
	else \
		$(MAKE) --no-print-directory test-build; \
	fi
	touch $@

# The tests' build itself (install-test runs it when the full build cannot serve).
test-build: $(VENV)/.torch-installed
	rm -f $(STAMP)
	$(call BUILD_AND_INSTALL,$(TEST_CUDA_ARCH_LIST))

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
