"""Build the C core, memmanager._core, from src/.

Switches (environment variables, all off by default):

  MEMMANAGER_WERROR=1    compile with -Werror (CI and `make test` set it)
  MEMMANAGER_SANITIZE=1  build with AddressSanitizer and UBSan (`make asan`)
  MEMMANAGER_COVERAGE=1  build with gcov instrumentation
  MEMMANAGER_DEBUG_BUILD=1  -O0 -g and C assertions enabled
"""

import glob
import os

from setuptools import Extension, setup


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
if flag("MEMMANAGER_COVERAGE"):
    extra_compile_args += ["--coverage", "-O0"]
    extra_link_args += ["--coverage"]

core = Extension(
    "memmanager._core",
    sources=sorted(glob.glob("src/*.c")),
    depends=sorted(glob.glob("src/*.h")) + ["memmanager/include/memmanager/allocator.h"],
    include_dirs=["src", "memmanager/include"],
    extra_compile_args=extra_compile_args,
    extra_link_args=extra_link_args,
    undef_macros=undef_macros,
    libraries=["rt", "dl"],
)

setup(ext_modules=[core])
