"""Discovery of installed plug-ins (DESIGN section 4): memmanager.use()
and the entry-point groups memmanager.allocators, .devices and .views.

The plug-in package is tests/plugin_pkg.  The `installed` fixture installs
it into a temporary site directory the way pip lays a package out (the
package, and a dist-info holding METADATA and the entry points read from
its pyproject.toml), and puts that directory on sys.path; the tests that
need a fresh interpreter run one with the same path.
"""

import os
import shutil
import subprocess
import sys
import textwrap
import tomllib

import pytest

import memmanager
from memmanager import Buffer

PLUGIN_PKG = os.path.join(os.path.dirname(__file__), "plugin_pkg")
MODULE = "memmanager_test_plugin"


def install(site):
    with open(os.path.join(PLUGIN_PKG, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    shutil.copytree(os.path.join(PLUGIN_PKG, MODULE), site / MODULE)
    dist_info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    lines = []
    for group, entries in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in entries.items()]
        lines.append("")
    (dist_info / "entry_points.txt").write_text("\n".join(lines))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    install(site)
    sys.path.insert(0, str(site))
    yield site
    sys.path.remove(str(site))
    for name in [m for m in sys.modules if m.startswith(MODULE)]:
        del sys.modules[name]


def run_fresh(site, code, debug=False):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site)] + [p for p in sys.path if p])
    env.pop("MEMMANAGER_DEBUG", None)
    if debug:
        env["MEMMANAGER_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, env=env, timeout=60)


def test_loaded_only_when_asked(installed):
    result = run_fresh(installed, f"""
        import sys, memmanager
        assert {MODULE!r} not in sys.modules
        assert "PluginArena" not in memmanager.allocators()
        memmanager.use(allocators=["PluginArena"])
        assert {MODULE!r} in sys.modules
        assert "PluginArena" in memmanager.allocators()
        assert "PluginFactory" not in memmanager.allocators()   # only what was named
        buf = memmanager.Buffer(4, 4, allocator="PluginArena", init_value="A")
        print(buf[:], buf.allocator)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["b'AAAAAAAAAAAAAAAA'", "PluginArena"]


def test_use_allocators(installed):
    memmanager.use(allocators=["PluginArena", "PyAlloc", "CMalloc"])
    plugin = sys.modules[MODULE]
    buf = Buffer(3, 3, allocator="PluginArena", init_value=9)
    assert buf[:] == b"\x09" * 9
    address = buf.address
    buf.release()
    assert ("arena", address) in plugin.calls["free"]


def test_use_is_idempotent(installed):
    memmanager.use(allocators="PluginFactory")         # a single name
    plugin = sys.modules[MODULE]
    made = plugin.calls["factory"]
    memmanager.use(allocators=["PluginFactory"])        # already registered: left alone
    assert plugin.calls["factory"] == made == 1
    buf = Buffer(2, 2, allocator="PluginFactory")
    address = buf.address
    del buf
    assert ("factory", address) in plugin.calls["free"]


def test_unknown_names_load_nothing(installed):
    result = run_fresh(installed, f"""
        import sys, memmanager
        for kwargs, exc in [(dict(allocators=["PluginArena", "NoSuchPlugin"]),
                             memmanager.UnknownAllocatorError),
                            (dict(allocators=["PluginArena"], devices=["NoSuchDevice"]), LookupError),
                            (dict(allocators=["PluginArena"], views=["NoSuchView"]), LookupError)]:
            try:
                memmanager.use(**kwargs)
            except exc as error:
                print(type(error).__name__, error)
            else:
                raise SystemExit("no error")
        assert {MODULE!r} not in sys.modules
        assert "PluginArena" not in memmanager.allocators()
    """)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "UnknownAllocatorError Allocator NoSuchPlugin does not exist."
    assert "NoSuchDevice" in lines[1] and "NoSuchView" in lines[2]


def test_broken_plugin_refused_with_names(installed):
    with pytest.raises(TypeError, match="free.*get_buffer_address|get_buffer_address"):
        memmanager.use(allocators=["PluginBroken"])
    assert "PluginBroken" not in memmanager.allocators()


def test_devices_and_views(installed):
    memmanager.use(devices=["PluginDevice", "NVIDIA_GPU"], views=["PluginView", "numpy"])
    plugin = sys.modules[MODULE]
    assert plugin.calls["device"] == 1 and plugin.calls["view"] == 1
    memmanager.use(devices="PluginDevice", views=("PluginView",))
    assert plugin.calls["device"] == 1 and plugin.calls["view"] == 1


@pytest.mark.parametrize("bad", [5, [5], [None], object()])
def test_bad_arguments(bad):
    with pytest.raises(TypeError):
        memmanager.use(allocators=bad)
    with pytest.raises(TypeError):
        memmanager.use(views=bad)


def test_nothing_to_do():
    assert memmanager.use() is None
    assert memmanager.use(allocators=[], devices=None, views=()) is None


def test_debug_line_per_plugin(installed):
    result = run_fresh(installed, """
        import memmanager
        memmanager.use(allocators=["PluginArena", "PluginFactory"], views=["PluginView"])
        class Direct:
            malloc = free = get_buffer_address = staticmethod(print)
        memmanager.register_allocator("Direct", Direct)
    """, debug=True)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "plug-in" in line]
    assert len(lines) == 4, result.stderr
    assert "'PluginArena'" in lines[0] and "memmanager.allocators:PluginArena" in lines[0]
    assert "memmanager-test-plugin 1.0" in lines[0]
    assert "'PluginFactory'" in lines[1]
    assert "'PluginView'" in lines[2]
    assert "'Direct'" in lines[3] and "class __main__.Direct" in lines[3]
    quiet = run_fresh(installed, """
        import memmanager
        memmanager.use(allocators=["PluginArena"])
    """)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_use_accepts_a_view_kind_registered_at_run_time():
    """A kind added with register_view() is loaded already: use() must not
    look for an entry point for it (and must not fail)."""
    import memmanager

    memmanager.register_view("use_test_kind", lambda buf, **options: memoryview(buf),
                             lambda view: bytes(view))
    memmanager.use(views=["use_test_kind"])
    with pytest.raises(LookupError):
        memmanager.use(views=["use_test_kind_never_registered"])
