"""tools/check_layers.py keeps src/ in layers (issue: architecture).

The tree as it is passes; a copy with one upward include, one header
circle, a file outside the layer folders or a wrong "Layer:" line fails,
each with a message naming the file.  The call check runs on the objects
of the build when they are there.
"""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "check_layers.py")
OBJECTS = os.path.join(ROOT, "build", "temp-plain", "src")


def run(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True)


@pytest.fixture
def src(tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(os.path.join(ROOT, "src"), copy)
    return copy


def test_the_tree_keeps_its_layers():
    result = run("--src", os.path.join(ROOT, "src"))
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("layers ok")


@pytest.mark.skipif(not os.path.isdir(OBJECTS), reason="no plain build objects to read")
def test_no_call_goes_up_or_round():
    result = run("--src", os.path.join(ROOT, "src"), "--objects", OBJECTS)
    assert result.returncode == 0, result.stdout
    assert "calls between files" in result.stdout


def prepend_include(path, header):
    text = path.read_text()
    opening_end = text.index("*/") + 2
    path.write_text(text[:opening_end] + f'\n#include "{header}"\n' + text[opening_end:])


def test_an_upward_include_fails(src):
    prepend_include(src / "allocators" / "pages.c", "buffer/buffer.h")
    result = run("--src", str(src))
    assert result.returncode == 1
    assert 'src/allocators/pages.c: includes "buffer/buffer.h" of the higher layer buffer' \
        in result.stdout


def test_a_header_circle_fails(src):
    prepend_include(src / "core" / "compat.h", "core/core.h")
    result = run("--src", str(src))
    assert result.returncode == 1
    assert "headers include each other in a circle" in result.stdout
    assert "core/compat.h" in result.stdout


def test_a_file_outside_the_layers_fails(src):
    (src / "stray.c").write_text("/* stray.c\n *\n * Layer: core.\n */\n")
    result = run("--src", str(src))
    assert result.returncode == 1
    assert "src/stray.c: outside a layer folder" in result.stdout


def test_an_unknown_header_fails(src):
    prepend_include(src / "core" / "args.c", "memmanager.h")
    result = run("--src", str(src))
    assert result.returncode == 1
    assert 'includes "memmanager.h", which is not a header of a layer folder' in result.stdout


def test_a_wrong_layer_line_fails(src):
    path = src / "buffer" / "views.c"
    path.write_text(path.read_text().replace("Layer: buffer", "Layer: core", 1))
    result = run("--src", str(src))
    assert result.returncode == 1
    assert "src/buffer/views.c: its comment says layer core" in result.stdout


def test_an_upward_call_fails(tmp_path):
    """Two objects, built here: a core file calling a buffer file's function."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    objects = tmp_path / "obj"
    for layer, code in (("core", "int up(void); int low(void) { return up(); }"),
                        ("buffer", "int low(void); int up(void) { return 1; }")):
        (objects / layer).mkdir(parents=True)
        source = tmp_path / f"{layer}.c"
        source.write_text(code)
        subprocess.run([cc, "-c", str(source), "-o", str(objects / layer / "f.o")], check=True)
    for layer in ("core", "buffer"):
        (tmp_path / "src" / layer).mkdir(parents=True)
        (tmp_path / "src" / layer / "f.c").write_text(f"/* f.c\n *\n * Layer: {layer}.\n */\n")
    result = run("--src", str(tmp_path / "src"), "--objects", str(objects))
    assert result.returncode == 1
    assert "src/core/f.c calls up into src/buffer/f.c (buffer): up" in result.stdout


def test_a_call_circle_inside_a_layer_fails(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    objects = tmp_path / "obj" / "buffer"
    objects.mkdir(parents=True)
    for name, code in (("a", "int b(void); int a(void) { return b(); }"),
                       ("b", "int a(void); int b(void) { return a(); }")):
        source = tmp_path / f"{name}.c"
        source.write_text(code)
        subprocess.run([cc, "-c", str(source), "-o", str(objects / f"{name}.o")], check=True)
    (tmp_path / "src" / "buffer").mkdir(parents=True)
    for name in ("a", "b"):
        (tmp_path / "src" / "buffer" / f"{name}.c").write_text("/* x\n *\n * Layer: buffer.\n */\n")
    result = run("--src", str(tmp_path / "src"), "--objects", str(tmp_path / "obj"))
    assert result.returncode == 1
    assert "files call each other in a circle: buffer/a.c -> buffer/b.c -> buffer/a.c" \
        in result.stdout
