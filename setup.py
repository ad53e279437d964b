"""Build the C core, memmanager._core, from src/.

Switches (environment variables, all off by default):

  MEMMANAGER_WERROR=1    compile with -Werror (CI and `make test` set it)
  MEMMANAGER_SANITIZE=1  build with AddressSanitizer and UBSan (`make asan`)
  MEMMANAGER_COVERAGE=1  build with gcov instrumentation
  MEMMANAGER_DEBUG_BUILD=1  -O0 -g and C assertions enabled
  MEMMANAGER_FUZZ=1      clang only: ASan + UBSan + libFuzzer coverage
                         (-fsanitize=fuzzer-no-link), for fuzz/ (`make fuzz`)
  MEMMANAGER_FUZZ_COVERAGE=1  clang only: source-based coverage
                         (-fprofile-instr-generate -fcoverage-mapping),
                         for `make fuzz-coverage`
"""

import glob
import os
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def flag(name):
    return os.environ.get(name, "") not in ("", "0")


extra_compile_args = ["-std=c11", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
                      "-fvisibility=hidden"]
extra_link_args = []
undef_macros = []

if flag("MEMMANAGER_WERROR"):
    extra_compile_args.append("-Werror")
if flag("MEMMANAGER_DEBUG_BUILD") or flag("MEMMANAGER_SANITIZE"):
    extra_compile_args += ["-O0", "-g3"]
    undef_macros.append("NDEBUG")
if flag("MEMMANAGER_SANITIZE"):
    sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                "-fno-sanitize-recover=undefined"]
    extra_compile_args += sanitize
    extra_link_args += sanitize
if flag("MEMMANAGER_FUZZ"):
    # The runtimes (ASan with UBSan, and libFuzzer) are not linked in: they
    # come preloaded from atheris (asan_with_fuzzer.so), see the Makefile.
    fuzz = ["-fsanitize=fuzzer-no-link,address,undefined", "-fno-omit-frame-pointer",
            "-fno-sanitize-recover=undefined"]
    extra_compile_args += fuzz + ["-O1", "-g"]
    extra_link_args += ["-fsanitize=address,undefined"]
    undef_macros.append("NDEBUG")
if flag("MEMMANAGER_FUZZ_COVERAGE"):
    coverage = ["-fprofile-instr-generate", "-fcoverage-mapping"]
    extra_compile_args += coverage + ["-O0", "-g"]
    extra_link_args += coverage
if flag("MEMMANAGER_COVERAGE"):
    extra_compile_args += ["--coverage", "-O0"]
    extra_link_args += ["--coverage"]

# Code alignment: each function on a 64-byte boundary, jump targets and
# loops on 32.  Without it the hot paths' speed depends on where unrelated
# edits happen to move them (docs/benchmarks.md has the measurement).  Flags
# the compiler does not know are left out.
ALIGNMENT_FLAGS = ["-falign-functions=64", "-falign-jumps=32", "-falign-loops=32"]


class BuildExt(build_ext):
    def build_extensions(self):
        for ext in self.extensions:
            ext.extra_compile_args += [f for f in ALIGNMENT_FLAGS if self._accepts(f)]
        super().build_extensions()

    def _accepts(self, flag):
        with tempfile.TemporaryDirectory() as tmp:
            source = os.path.join(tmp, "probe.c")
            with open(source, "w") as f:
                f.write("int probe(int x) { return x + 1; }\n")
            try:
                self.compiler.compile([source], output_dir=tmp,
                                      extra_postargs=[flag, "-Werror"])
            except Exception:  # CompileError: the compiler refuses or warns
                return False
            return True


core = Extension(
    "memmanager._core",
    sources=sorted(glob.glob("src/*/*.c")),
    depends=sorted(glob.glob("src/*/*.h")) + ["memmanager/include/memmanager/allocator.h"],
    include_dirs=["src", "memmanager/include"],
    extra_compile_args=extra_compile_args,
    extra_link_args=extra_link_args,
    undef_macros=undef_macros,
    libraries=["rt", "dl"],
)

setup(ext_modules=[core], cmdclass={"build_ext": BuildExt})
