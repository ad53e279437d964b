# The two set-up commands of the README are `make demo` and `make test`.
# Both create .venv when it is missing, install the package into it
# (editable, so the C extension is built in place), and run.
#
# Reliability targets (docs/reliability.md):
#   make asan      the whole suite against an AddressSanitizer + UBSan build,
#                  then a LeakSanitizer pass over tests/test_leaks.py
#   make valgrind  memcheck over the suite, with a debug build
# The extension lives in place (memmanager/_core*.so) in one flavour at a
# time: plain (build, test), asan or debug.  build/flavour names the one
# there now; asking for another rebuilds it, so `make test` after
# `make asan` runs against a plain build again.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
export MEMMANAGER_WERROR ?= 1

SOURCES := $(wildcard src/*.c src/*.h memmanager/include/memmanager/*.h) setup.py pyproject.toml
FLAVOUR_FILE := build/flavour

.PHONY: demo test build bench bench-quick callgrind clean asan asan-build valgrind valgrind-build

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=77" wheel

# Installing the test extra once; rebuilding the extension whenever a C file changes.
$(VENV)/.installed: $(PY) pyproject.toml setup.py
	$(PY) -m pip install -q --no-build-isolation -e '.[test]'
	@mkdir -p build && echo plain > $(FLAVOUR_FILE)
	touch $@

# $(call build_ext,FLAVOUR,ENVIRONMENT): build in place; --force when the
# extension there is of another flavour (setuptools only compares times).
define build_ext
	@mkdir -p build
	@force=; if [ "$$(cat $(FLAVOUR_FILE) 2>/dev/null)" != "$(1)" ]; then force=--force; fi; \
	echo "$(2) $(PY) setup.py -q build_ext --inplace -t build/temp-$(1) $$force"; \
	$(2) $(PY) setup.py -q build_ext --inplace -t build/temp-$(1) $$force
	@echo $(1) > $(FLAVOUR_FILE)
endef

build: $(VENV)/.installed $(SOURCES)
	$(call build_ext,plain,)

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

# ---------------------------------------------------------------------------
# AddressSanitizer + UndefinedBehaviorSanitizer.  The interpreter is not
# instrumented, so the ASan runtime is preloaded; PYTHONMALLOC=malloc sends
# every Python allocation through it.  Options (docs/reliability.md):
#   allocator_may_return_null=1  tests ask for 2**60 bytes and expect MemoryError
#   detect_leaks=0               in the first pass: CPython does not free
#                                everything at exit, so LeakSanitizer over the
#                                whole suite reports hundreds of its blocks
# The second pass turns leak detection on (with full stacks) over the leak
# tests and fails only on leaks allocated from src/ (tools/lsan_report.py).

SANITIZER_CC = $(shell $(PYTHON) -c "import sysconfig; print((sysconfig.get_config_var('CC') or 'cc').split()[0])")
LIBASAN = $(shell $(SANITIZER_CC) -print-file-name=libasan.so)
ASAN_RUN = LD_PRELOAD=$(LIBASAN) PYTHONMALLOC=malloc \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ASAN_DIR := build/asan

asan-build: $(VENV)/.installed $(SOURCES)
	$(call build_ext,asan,MEMMANAGER_SANITIZE=1)

asan: asan-build
	@test -f "$(LIBASAN)" || { echo "libasan.so not found for $(SANITIZER_CC)"; exit 1; }
	rm -rf $(ASAN_DIR) && mkdir -p $(ASAN_DIR)
	$(ASAN_RUN) ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 \
		$(PY) -m pytest -q -p no:cacheprovider tests
	-$(ASAN_RUN) MEMMANAGER_TEST_SCALE=small ASAN_OPTIONS=detect_leaks=1:fast_unwind_on_malloc=0:malloc_context_size=40:allocator_may_return_null=1:log_path=$(ASAN_DIR)/lsan \
		$(PY) -m pytest -q -p no:cacheprovider --junitxml=$(ASAN_DIR)/leak-pass.xml tests/test_leaks.py
	$(PY) tools/lsan_report.py $(ASAN_DIR)

# ---------------------------------------------------------------------------
# Valgrind memcheck over the suite, against a -O0 -g build with C
# assertions.  PYTHONMALLOC=malloc makes every Python allocation visible;
# tools/valgrind-python.supp silences what CPython and glibc do on their
# own.  The randomised tests run fewer examples and shorter stress loops
# (memcheck is ~30 times slower); child interpreters are not traced (the
# ASan run covers them).  tools/valgrind_report.py fails on any invalid
# access or uninitialised use, and on definite leaks allocated from src/.

VALGRIND_DIR := build/valgrind
VALGRIND_TESTS ?= tests
VALGRIND_FLAGS = --tool=memcheck --suppressions=tools/valgrind-python.supp \
	--leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite \
	--num-callers=40 --fullpath-after= --log-file=$(VALGRIND_DIR)/memcheck.%p.log

valgrind-build: $(VENV)/.installed $(SOURCES)
	$(call build_ext,debug,MEMMANAGER_DEBUG_BUILD=1)

valgrind: valgrind-build
	rm -rf $(VALGRIND_DIR) && mkdir -p $(VALGRIND_DIR)
	PYTHONMALLOC=malloc MEMMANAGER_TEST_SCALE=small \
		valgrind $(VALGRIND_FLAGS) $(PY) -m pytest -q -p no:cacheprovider $(VALGRIND_TESTS)
	$(PY) tools/valgrind_report.py $(VALGRIND_DIR)

clean:
	rm -rf build $(VENV) memmanager/*.so *.egg-info
