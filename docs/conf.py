"""Sphinx configuration: the pages of docs/ (MyST Markdown) and an API
reference read from the package's sources and stubs (sphinx-autoapi).

Build with `make docs` (HTML in build/docs, every warning an error).
"""

import inspect
import pathlib
import re

from sphinx.util import logging

ROOT = pathlib.Path(__file__).resolve().parent.parent

project = "memmanager"
author = "The memmanager developers"
copyright = "the memmanager developers"
release = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]
version = release

extensions = ["myst_parser", "autoapi.extension"]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]

# MyST: headings get anchors down to level 3, so that links such as
# user-guide.md#11-errors resolve and are checked; code fences are
# literal blocks, with no notebook execution.
myst_heading_anchors = 3
myst_enable_extensions = ["deflist"]

# Every cross-reference must resolve (`make docs` runs with -n -W).
nitpicky = True
# The standard library and typing names of the stubs' annotations have no
# inventory to resolve against (the build runs offline, without
# intersphinx).
nitpick_ignore_regex = [
    ("py:class", r"(collections\.abc|typing|types|ctypes|os)\..*"),
    ("py:class", r"(int|str|bytes|bytearray|bool|float|object|type|dict|list|tuple|"
                 r"memoryview|None|Any|Callable|Mapping|Iterable|Sequence|Optional|"
                 r"Exception|ValueError|LookupError|RuntimeError|NamedTuple|"
                 r"SupportsIndex)"),
    # Private type aliases of the stubs (memmanager._core._Source, the
    # view kinds' _Create and _Clone): spelled out in the docstrings.
    ("py:class", r"_[A-Z]\w*"),
    # use()'s argument type (a name, names, or None), private to
    # memmanager._plugins and spelled out in use()'s docstring.
    ("py:class", r"Names"),
]

# The API reference: read statically from memmanager/ (the .pyi stub for
# the C module _core, the .py files for the Python side), without
# importing them; only the C module's docstrings come from the compiled
# module (below).
autoapi_type = "python"
autoapi_dirs = [str(ROOT / "memmanager")]
autoapi_root = "api"
autoapi_file_patterns = ["*.pyi", "*.py"]
autoapi_ignore = ["*/bench/*", "*/tour/*", "*/__main__.py"]
autoapi_options = ["members", "undoc-members", "show-inheritance",
                   "show-module-summary", "imported-members"]
autoapi_keep_files = False
autoapi_add_toctree_entry = False
autoapi_python_class_content = "both"
autoapi_member_order = "groupwise"

html_theme = "alabaster"
html_title = f"memmanager {release}"
html_static_path = []
highlight_language = "text"


# Names the stubs and sources spell by where they are defined (the private
# memmanager._core, memmanager._views, or bare within a module) resolve to
# where the reference documents them: the package memmanager, which
# re-exports them.  A name documented nowhere stays an error.
def _resolve_to_public(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    public = "memmanager." + target.rsplit(".", 1)[-1]
    if public == target:
        return None
    domain = env.get_domain("py")
    if public not in domain.objects:
        return None
    return domain.resolve_xref(env, node.get("refdoc", ""), app.builder,
                               node.get("reftype", "obj"), public, node, contnode)


# The stub of the C module (memmanager/_core.pyi) gives signatures and
# types but no docstrings; the C module has them.  Where the stub has
# none, the docstring is taken from the compiled module (`make docs`
# builds it first); a documented object of the C module without one is a
# warning, so an error under -W.
def _runtime_docstring(dotted):
    import memmanager

    obj = memmanager
    for part in dotted.split(".")[1:]:
        scope = obj
        obj = getattr(obj, part, None)
        if obj is None:
            return None
        if isinstance(scope, type):           # descriptors, not what they return
            for klass in scope.__mro__:
                if part in klass.__dict__:
                    obj = klass.__dict__[part]
                    break
    if not (callable(obj) or hasattr(type(obj), "__get__")):
        return None                           # a constant: its docstring is its type's
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else obj.__doc__
    return inspect.cleandoc(doc) if doc else None


def _fill_docstring(app, what, name, obj, skip, options):
    if skip or obj.docstring.strip() or not name.startswith("memmanager."):
        return None
    if what not in ("class", "exception", "function", "method", "property", "attribute"):
        return None
    doc = _runtime_docstring(name)
    if doc:
        obj.docstring = doc
    elif what not in ("attribute",):
        logging.getLogger(__name__).warning("%s has no docstring", name)
    return None


def setup(app):
    app.connect("missing-reference", _resolve_to_public)
    app.connect("autoapi-skip-member", _fill_docstring)
