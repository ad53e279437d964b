"""The tour's runner: prose, and code steps shown at a >>> prompt and run.

Each step is parsed and executed statement by statement in one namespace
shared by every section, so the names of one section carry over to the
next; the code shown is exactly the code that runs.
"""

import ast
import sys
import textwrap

WIDTH = 76
INDENT = "    "


class _IndentedOutput:
    """A stdout stand-in that indents every line written through it."""

    def __init__(self, stream, prefix):
        self._stream = stream
        self._prefix = prefix
        self._at_line_start = True

    def write(self, text):
        for piece in text.splitlines(keepends=True):
            if self._at_line_start and piece != "\n":
                self._stream.write(self._prefix)
            self._stream.write(piece)
            self._at_line_start = piece.endswith("\n")
        return len(text)

    def flush(self):
        self._stream.flush()


class Tour:
    """Prints prose and runs code steps in one shared namespace."""

    def __init__(self, out=None):
        self.out = out if out is not None else sys.stdout
        self.namespace = {"__name__": "__tour__"}

    def header(self, title):
        rule = "=" * WIDTH
        self.out.write(f"\n{rule}\n{title}\n{rule}\n\n")

    def say(self, text):
        """Print a paragraph (or several, separated by blank lines)."""
        paragraphs = textwrap.dedent(text).strip().split("\n\n")
        for paragraph in paragraphs:
            self.out.write(textwrap.fill(" ".join(paragraph.split()), WIDTH))
            self.out.write("\n\n")

    def run(self, source):
        """Show source at a >>> prompt, one statement at a time, and run it."""
        source = textwrap.dedent(source).strip("\n")
        lines = source.splitlines()
        tree = ast.parse(source, filename="<tour>")
        indented = _IndentedOutput(self.out, INDENT)
        for statement in tree.body:
            shown = lines[statement.lineno - 1:statement.end_lineno]
            self.out.write(f"{INDENT}>>> {shown[0]}\n")
            for line in shown[1:]:
                self.out.write(f"{INDENT}... {line}\n")
            code = compile(ast.Module(body=[statement], type_ignores=[]),
                           "<tour>", "exec")
            saved_stdout = sys.stdout
            sys.stdout = indented
            try:
                exec(code, self.namespace)
            finally:
                sys.stdout = saved_stdout
            self.out.flush()
        self.out.write("\n")
