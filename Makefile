# The two set-up commands of the README are `make demo` and `make test`.
# Both create .venv when it is missing, install the package into it
# (editable, so the C extension is built in place), and run.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
export MEMMANAGER_WERROR ?= 1

SOURCES := $(wildcard src/*.c src/*.h memmanager/include/memmanager/*.h) setup.py pyproject.toml

.PHONY: demo test build bench bench-quick callgrind clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=77" wheel

# Installing the test extra once; rebuilding the extension whenever a C file changes.
$(VENV)/.installed: $(PY) pyproject.toml setup.py
	$(PY) -m pip install -q --no-build-isolation -e '.[test]'
	touch $@

build: $(VENV)/.installed $(SOURCES)
	$(PY) setup.py -q build_ext --inplace

demo: build
	$(PY) -m memmanager demo

test: build
	$(PY) -m pytest -q tests

# The whole comparison against the peers (pytest-benchmark), regenerating
# docs/benchmarks.md and docs/benchmarks.png.
bench: build
	$(PY) -m pip install -q -e '.[test,bench]' --no-build-isolation
	$(PY) -m memmanager.bench --out docs

# Quick ratios of the core's hot paths against their peers (DESIGN section 9),
# and of the allocators against the system calls they wrap.
bench-quick: build
	$(PY) benchmarks/bench_core.py
	cd benchmarks && ../$(PY) bench_consume.py
	$(PY) benchmarks/bench_allocators.py

# Instructions per hot-path operation under valgrind (stable on noisy machines).
callgrind: build
	$(PY) benchmarks/callgrind_hotpaths.py

clean:
	rm -rf build $(VENV) memmanager/*.so *.egg-info
