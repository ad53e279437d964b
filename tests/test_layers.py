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


def build_tree(tmp_path, sources):
    """A src/ of the given files ({"core/f.c": C code}) and their objects,
    compiled here: the (src, objects) folders to check."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    src, objects = tmp_path / "src", tmp_path / "obj"
    for path, code in sources.items():
        layer = path.split("/")[0]
        for folder in (src, objects):
            (folder / layer).mkdir(parents=True, exist_ok=True)
        (src / path).write_text(f"/* {path}\n *\n * Layer: {layer}.\n */\n{code}\n")
        subprocess.run([cc, "-c", str(src / path), "-o", str(objects / path)[:-2] + ".o"],
                       check=True)
    return str(src), str(objects)


def test_an_upward_call_fails(tmp_path):
    src, objects = build_tree(tmp_path, {
        "core/f.c": "int up(void); int low(void) { return up(); }",
        "buffer/f.c": "int low(void); int up(void) { return 1; }",
    })
    result = run("--src", src, "--objects", objects)
    assert result.returncode == 1
    assert "src/core/f.c calls up into src/buffer/f.c (buffer): up" in result.stdout


def test_a_call_circle_inside_a_layer_fails(tmp_path):
    src, objects = build_tree(tmp_path, {
        "buffer/a.c": "int b(void); int a(void) { return b(); }",
        "buffer/b.c": "int a(void); int b(void) { return a(); }",
    })
    result = run("--src", src, "--objects", objects)
    assert result.returncode == 1
    assert "files call each other in a circle: buffer/a.c -> buffer/b.c -> buffer/a.c" \
        in result.stdout


def test_objects_of_moved_files_are_ignored(tmp_path):
    """A build folder keeps the objects of files since moved; they are not
    read (an old flat build/temp-plain/src/*.o once made a false circle)."""
    src, objects = build_tree(tmp_path, {
        "buffer/a.c": "int a(void) { return 1; }",
        "core/b.c": "int b(void) { return 2; }",
    })
    stale = tmp_path / "stale.c"
    stale.write_text("int a(void); int b(void); int old(void) { return a() + b(); }")
    cc = shutil.which("cc") or shutil.which("gcc")
    subprocess.run([cc, "-c", str(stale), "-o", os.path.join(objects, "core", "old.o")],
                   check=True)
    result = run("--src", src, "--objects", objects)
    assert result.returncode == 0, result.stdout   # else: core/old.c calls up into buffer
