#!/usr/bin/env bash
# tools/device_checks.sh -- everything a machine with an NVIDIA GPU should
# run, in one go, from the repository root:
#
#   1. what the machine is (GPU, driver, Python, compiler);
#   2. the C core built in place with that machine's Python (no venv: the
#      GPU machines have NumPy, CuPy and PyTorch installed system-wide);
#   3. tools/gpu_check.py: CuPy/PyTorch kernels on mapped buffers and the
#      CudaHost bandwidth bar;
#   4. the tour, then the whole test suite, where the real-GPU tests run
#      instead of being skipped (pytest-xdist spreads it over the cores).
#
# Logs go to $OUT when it is set (the device tool's output folder), else to
# build/device/.  Wheels of missing test dependencies (cffi, pycparser) are
# installed from .whl/ when that folder is there.
# Exit status: that of gpu_check.py, or of the test suite when it failed.

set -u
out="${OUT:-build/device}"
mkdir -p "$out"
python="${PYTHON:-python3}"

step() { printf '\n=== %s\n' "$*"; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
"$python" --version; gcc --version | head -1; nproc

if ls .whl/*.whl >/dev/null 2>&1; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

step "build"
# setuptools first; when that fails (an old setuptools that cannot read
# pyproject.toml, say), the same compile by hand.
if ! "$python" setup.py -q build_ext --inplace -j "$(nproc)" >"$out/build.log" 2>&1; then
    tail -15 "$out/build.log"
    include=$("$python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
    suffix=$("$python" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
    echo "setup.py failed; compiling with gcc against $include"
    gcc -shared -fPIC -O2 -std=c11 -fvisibility=hidden -Isrc -Imemmanager/include \
        -I"$include" src/*/*.c -o "memmanager/_core$suffix" -lrt -ldl -lpthread \
        >>"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 3; }
fi
"$python" -c "import memmanager, memmanager.cuda as c; print(memmanager.__version__, \
c.device_count(), c.driver_version(), c.unavailable_reason())"

step "tools/gpu_check.py"
timeout 240 "$python" tools/gpu_check.py 2>&1 | tee "$out/gpu_check.log"
check_status=${PIPESTATUS[0]}

step "tour"
timeout 60 "$python" -m memmanager demo >"$out/tour.log" 2>&1
echo "tour exit status $?"

step "test suite"
timeout 180 "$python" -m pytest -q -p no:cacheprovider -n "$(nproc)" --timeout 120 \
    -rs tests >"$out/pytest.log" 2>&1
test_status=$?
tail -25 "$out/pytest.log"

step "done: gpu_check $check_status, tests $test_status"
[ "$check_status" -ne 0 ] && exit "$check_status"
exit "$test_status"
