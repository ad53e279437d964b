# The two set-up commands of the README are `make demo` and `make test`.
# Both create .venv when it is missing, install the package into it
# (editable, so the C extension is built in place), and run.
#
# Reliability targets (docs/reliability.md):
#   make asan      the whole suite against an AddressSanitizer + UBSan build,
#                  then a LeakSanitizer pass over tests/test_leaks.py
#   make valgrind  memcheck over the suite, with a debug build
#   make fuzz      coverage-guided fuzzing of the API (atheris, libFuzzer)
#                  under ASan + UBSan for FUZZ_TIME seconds (clang needed)
#   make fuzz-coverage  which lines of src/ the fuzz corpus reaches
#   make numpy-suite    NumPy's own tests with memmanager allocators as
#                  NumPy's handler, compared test by test with NumPy's default
# The extension lives in place (memmanager/_core*.so) in one flavour at a
# time: plain (build, test), asan, debug, fuzz or fuzzcov.  build/flavour names the one
# there now; asking for another rebuilds it, so `make test` after
# `make asan` runs against a plain build again.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
export MEMMANAGER_WERROR ?= 1

SOURCES := $(wildcard src/*/*.c src/*/*.h memmanager/include/memmanager/*.h) setup.py pyproject.toml
FLAVOUR_FILE := build/flavour

.PHONY: demo test build lint bench bench-quick callgrind clean asan asan-build valgrind valgrind-build \
	fuzz fuzz-build fuzz-coverage fuzz-replay fuzz-clang numpy-suite
.PHONY: docs

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

# src/ keeps its layers (core < allocators < buffer < interop < cuda <
# module): no include of a higher layer, no header circle, and, read from
# the plain build's objects, no call up and no two files calling round.
lint: build
	$(PY) tools/check_layers.py --src src --objects build/temp-plain/src

test: build
	$(PY) -m pytest -q tests

# ---------------------------------------------------------------------------
# Benchmarks: one suite, benchmarks/bench_*.py on pytest-benchmark, driven
# by benchmarks/run.py (docs/benchmarks.md says what each row compares).
#   make bench        the whole suite, 3 interleaved repeats; prints every
#                     ratio and rewrites the generated part of
#                     docs/benchmarks.md and docs/benchmarks.png
#   make bench-quick  only the rows the design's targets name (the hotpath
#                     marker), 5 repeats, shorter timings: a ratio table on
#                     stdout, writes no page
#   make callgrind    instructions per hot-path operation under valgrind
#                     (stable on a noisy machine)
# BENCH_ARGS go to benchmarks/run.py: e.g. BENCH_ARGS='--repeats 5 -- -k consume'.
# The bench extra's packages are installed once, without reinstalling the
# package (the extension in place stays the flavour it is).
BENCH_ARGS ?=

# The documentation site (Sphinx + MyST, docs/conf.py) in build/docs: every
# warning is an error (-W, --keep-going to list them all), every
# cross-reference and every link or anchor between pages must resolve
# (-n).  The API reference needs the built extension (its docstrings).
$(VENV)/.docs-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q --no-build-isolation -e '.[docs]'
	touch $@

docs: build $(VENV)/.docs-installed
	rm -rf build/docs docs/api
	$(PY) -m sphinx -b html -n -W --keep-going -q docs build/docs
	@echo "docs: build/docs/index.html"

$(VENV)/.bench: $(VENV)/.installed pyproject.toml
	$(PY) -c "import subprocess, sys, tomllib; \
	extra = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['bench']; \
	subprocess.check_call([sys.executable, '-m', 'pip', 'install', '-q', *extra])"
	touch $@

bench: build $(VENV)/.bench
	$(PY) benchmarks/run.py --out docs $(BENCH_ARGS)

bench-quick: build $(VENV)/.bench
	$(PY) benchmarks/run.py --quick $(BENCH_ARGS)

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

# ---------------------------------------------------------------------------
# Coverage-guided fuzzing (fuzz/fuzz_api.py, docs/reliability.md).  atheris
# drives libFuzzer over a sequence of API operations decoded from its bytes;
# the extension is built with clang, -fsanitize=fuzzer-no-link (edge
# coverage for libFuzzer) plus ASan and UBSan.  The runtimes come from
# atheris' asan_with_fuzzer.so, preloaded.  New inputs go to
# build/fuzz/new-corpus, crashes to build/fuzz/crash-*; at the end both
# corpora are merged (minimised, -merge=1) back into fuzz/corpus.
#   FUZZ_TIME=seconds   how long (default 120)
#   FUZZ_MERGE=0        leave fuzz/corpus as it is
# A crash, a sanitizer report or a failed check of the harness (a buffer or
# a /dev/shm name left behind) fails the target.  Reproduce one with
#   make fuzz-replay FUZZ_INPUT=build/fuzz/crash-...
# which replays it in verbose mode (each operation printed).
#
# make fuzz-coverage replays fuzz/corpus once against a clang
# source-coverage build (-fprofile-instr-generate -fcoverage-mapping) and
# prints llvm-cov's line and function coverage of each file of src/.

FUZZ_CC ?= clang
FUZZ_TIME ?= 120
FUZZ_MERGE ?= 1
FUZZ_DIR := build/fuzz
FUZZ_CORPUS := fuzz/corpus
FUZZ_INPUT ?= $(FUZZ_CORPUS)
ATHERIS_VERSION := 3.0.0
ATHERIS_LIB = $(shell $(PY) -c "import atheris; print(atheris.path())")
FUZZ_ENV = LD_PRELOAD=$(ATHERIS_LIB)/asan_with_fuzzer.so PYTHONMALLOC=malloc \
	ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:handle_abort=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# libFuzzer's own limits: one input may run 60 s; the RSS of the process is
# capped, single allocations are not (the harness asks for 2**62 bytes on
# purpose, and expects MemoryError).
FUZZ_FLAGS = -max_len=4096 -timeout=60 -rss_limit_mb=6144 -malloc_limit_mb=1000000000 \
	-print_final_stats=1 -artifact_prefix=$(CURDIR)/$(FUZZ_DIR)/
LLVM_PROFDATA ?= $(shell command -v llvm-profdata || ls /usr/lib/llvm-*/bin/llvm-profdata 2>/dev/null | tail -1)
LLVM_COV ?= $(shell command -v llvm-cov || ls /usr/lib/llvm-*/bin/llvm-cov 2>/dev/null | tail -1)

fuzz-clang:
	@command -v $(FUZZ_CC) >/dev/null 2>&1 || { \
	  echo "make fuzz needs clang with its sanitizer runtimes (FUZZ_CC=$(FUZZ_CC) not found)."; \
	  echo "On Debian or Ubuntu: apt-get install clang"; exit 1; }

$(VENV)/.atheris: $(VENV)/.installed
	$(PY) -m pip install -q atheris==$(ATHERIS_VERSION)
	touch $@

# The wrapper libFuzzer runs again (as argv[0]) for -merge and -minimize_crash.
$(FUZZ_DIR)/fuzz-api: $(VENV)/.atheris Makefile
	@mkdir -p $(FUZZ_DIR)
	@printf '#!/bin/sh\n# made by make fuzz: the harness with the sanitizer runtimes preloaded\nexec env %s FUZZ_ARGV0="$$0" %s %s "$$@"\n' \
	  '$(FUZZ_ENV)' '$(CURDIR)/$(PY)' '$(CURDIR)/fuzz/fuzz_api.py' > $@
	@chmod +x $@

fuzz-build: fuzz-clang $(VENV)/.atheris $(SOURCES)
	$(call build_ext,fuzz,CC=$(FUZZ_CC) MEMMANAGER_FUZZ=1)

fuzz: fuzz-build $(FUZZ_DIR)/fuzz-api
	rm -rf $(FUZZ_DIR)/new-corpus $(FUZZ_DIR)/merged
	mkdir -p $(FUZZ_DIR)/new-corpus $(FUZZ_CORPUS)
	$(FUZZ_DIR)/fuzz-api $(FUZZ_FLAGS) -max_total_time=$(FUZZ_TIME) \
		$(FUZZ_DIR)/new-corpus $(FUZZ_CORPUS)
	@if [ "$(FUZZ_MERGE)" != 0 ]; then \
	  mkdir -p $(FUZZ_DIR)/merged && \
	  $(FUZZ_DIR)/fuzz-api $(FUZZ_FLAGS) -merge=1 $(FUZZ_DIR)/merged $(FUZZ_CORPUS) $(FUZZ_DIR)/new-corpus \
	    > $(FUZZ_DIR)/merge.log 2>&1 || { tail -40 $(FUZZ_DIR)/merge.log; exit 1; }; \
	  rm -rf $(FUZZ_CORPUS) && mv $(FUZZ_DIR)/merged $(FUZZ_CORPUS) && \
	  echo "fuzz/corpus: $$(ls $(FUZZ_CORPUS) | wc -l) inputs, $$(du -sb $(FUZZ_CORPUS) | cut -f1) bytes after merging"; \
	fi

fuzz-replay: fuzz-build $(FUZZ_DIR)/fuzz-api
	$(FUZZ_DIR)/fuzz-api --replay -v $(FUZZ_INPUT)

fuzz-coverage: fuzz-clang $(VENV)/.atheris $(SOURCES)
	@test -n "$(LLVM_PROFDATA)" -a -n "$(LLVM_COV)" || { \
	  echo "make fuzz-coverage needs llvm-profdata and llvm-cov (apt-get install llvm)"; exit 1; }
	$(call build_ext,fuzzcov,CC=$(FUZZ_CC) MEMMANAGER_FUZZ_COVERAGE=1)
	rm -rf $(FUZZ_DIR)/coverage && mkdir -p $(FUZZ_DIR)/coverage
	LLVM_PROFILE_FILE=$(CURDIR)/$(FUZZ_DIR)/coverage/%p.profraw \
		$(PY) fuzz/fuzz_api.py --replay $(FUZZ_CORPUS) > $(FUZZ_DIR)/coverage/replay.log 2>&1 || { \
		tail -40 $(FUZZ_DIR)/coverage/replay.log; exit 1; }
	$(LLVM_PROFDATA) merge -sparse -o $(FUZZ_DIR)/coverage/fuzz.profdata $(FUZZ_DIR)/coverage/*.profraw
	$(LLVM_COV) report memmanager/_core*.so -instr-profile=$(FUZZ_DIR)/coverage/fuzz.profdata \
		-show-region-summary=false -show-branch-summary=false $(wildcard src/*/*.c) \
		| sed 's|^$(CURDIR)/||' | tee $(FUZZ_DIR)/coverage/report.txt
	$(LLVM_COV) show memmanager/_core*.so -instr-profile=$(FUZZ_DIR)/coverage/fuzz.profdata \
		-format=html -output-dir=$(FUZZ_DIR)/coverage/html $(wildcard src/*/*.c) >/dev/null
	@echo "line by line: $(FUZZ_DIR)/coverage/html/index.html"

# ---------------------------------------------------------------------------
# NumPy's own test suite with memmanager allocators installed as NumPy's
# handler (docs/reliability.md, "NumPy's own test suite").
# tools/numpy_suite/run.py runs `pytest --pyargs numpy._core` from an empty
# temporary directory once per mode: NumPy's default handler, then
# Aligned(alignment=4096), then a Pool over CMalloc, each installed by the
# plug-in tools/numpy_suite/plugin.py before the test modules import and
# checked to have made the tests' arrays.  It fails on a test that fails or
# is skipped under an allocator but passes under the default handler (after
# running the differing tests again in both modes, so a flaky one does not
# count), and on a run that did not finish or did not run under the
# allocator.  Results in build/numpy-suite/ (junit XML, every test's outcome
# per mode, summary.json).
# Cost on 2 cores: about 30 minutes (measured 28 to 38 on a 2-core machine
# shared with other jobs: 8 to 15 minutes a mode with two xdist workers, and
# a minute or two of reruns).  One mode serially took 10.5 minutes.
#   NUMPY_SUITE_ARGS  go to run.py: e.g. '--suite numpy' (all of NumPy),
#                     '--modes default,cmalloc', '-n 0' (no xdist), '--fast'
#                     (leave out NumPy's slow tests), '-- -x' (to pytest)
# meson and ninja let test_mem_policy.py build its C allocator (without them
# those tests error); pytest-xdist runs two workers.  Installed once, into
# .venv, without reinstalling the package.
NUMPY_SUITE_ARGS ?=

$(VENV)/.numpy-suite: $(VENV)/.installed
	$(PY) -m pip install -q pytest-xdist meson ninja
	touch $@

numpy-suite: build $(VENV)/.numpy-suite
	$(PY) tools/numpy_suite/run.py $(NUMPY_SUITE_ARGS)

clean:
	rm -rf build $(VENV) memmanager/*.so *.egg-info
