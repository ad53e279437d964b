#!/usr/bin/env python3
"""Check that src/ keeps its layers: `make lint` runs this.

The C core lives in src/<layer>/, one folder per layer, lowest first:

    core  <  allocators  <  buffer  <  interop  <  cuda  <  module

A file may include headers of its own layer and of the layers below it,
never above.  The checks, each a reason to fail:

  includes   every #include "..." names a file that exists, in a layer
             folder (or the public memmanager/allocator.h), and not in a
             higher layer; no C file sits outside a layer folder
  cycles     the include graph of the headers has no cycle
  headers    each file's opening comment names its layer ("Layer: core")
  calls      with --objects DIR (the build's object files, src/ layout):
             which file calls which, read from the symbols each object
             defines and uses (nm); no call goes to a higher layer, and
             no two files call each other, directly or round a circle

Exit status 0 when all hold, 1 otherwise (each problem on one line).
"""

import argparse
import os
import re
import subprocess
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Set

LAYERS = ["core", "allocators", "adaptors", "buffer", "interop", "cuda", "module"]
PUBLIC_HEADERS = {"memmanager/allocator.h"}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)
LAYER_LINE = re.compile(r"\bLayer: (\w+)")


def layer_of(path: str) -> Optional[str]:
    """The layer of a path relative to src/ ("buffer/buffer.c"), or None."""
    head = path.split("/", 1)[0]
    return head if head in LAYERS and "/" in path else None


def rank(layer: str) -> int:
    return LAYERS.index(layer)


def source_files(src: str) -> List[str]:
    found = []
    for root, _dirs, files in os.walk(src):
        for name in files:
            if name.endswith((".c", ".h")):
                found.append(os.path.relpath(os.path.join(root, name), src))
    return sorted(found)


def check_includes(src: str, files: List[str], problems: List[str]) -> Dict[str, List[str]]:
    """Problems with includes and opening comments; the include graph."""
    graph: Dict[str, List[str]] = {}
    for path in files:
        layer = layer_of(path)
        if layer is None:
            problems.append(f"src/{path}: outside a layer folder ({', '.join(LAYERS)})")
            continue
        with open(os.path.join(src, path), encoding="utf-8") as f:
            text = f.read()
        opening = text[:text.find("*/") + 2] if text.startswith("/*") else ""
        named = LAYER_LINE.search(opening)
        if named is None:
            problems.append(f"src/{path}: its opening comment does not say its layer")
        elif named.group(1) != layer:
            problems.append(f"src/{path}: its comment says layer {named.group(1)}, "
                            f"but it lives in {layer}/")
        graph[path] = []
        for target in INCLUDE.findall(text):
            if target in PUBLIC_HEADERS:
                continue
            target_layer = layer_of(target)
            if target_layer is None or not os.path.exists(os.path.join(src, target)):
                problems.append(f"src/{path}: includes \"{target}\", which is not a "
                                f"header of a layer folder")
            elif rank(target_layer) > rank(layer):
                problems.append(f"src/{path}: includes \"{target}\" of the higher "
                                f"layer {target_layer}")
            else:
                graph[path].append(target)
    return graph


def find_cycle(graph: Dict[str, List[str]]) -> Optional[List[str]]:
    """One cycle of the graph as a list of nodes, or None."""
    state: Dict[str, int] = {}   # 1: on the path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for succ in sorted(graph.get(node, ())):
            if state.get(succ) == 1:
                return path[path.index(succ):] + [succ]
            if succ not in state:
                cycle = visit(succ)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def symbols(obj: str):
    """(defined, used) global symbols of an object file."""
    out = subprocess.run(["nm", obj], capture_output=True, text=True, check=True).stdout
    defined, used = set(), set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] in "TDRBCV":
            defined.add(fields[2])
        elif len(fields) == 2 and fields[0] == "U":
            used.add(fields[1])
    return defined, used


def check_calls(objects: str, src: Optional[str], problems: List[str]) -> int:
    """Upward calls and circles between files, from the object files (those
    of sources that still exist, when src is given: a build folder keeps
    the objects of files since moved)."""
    owner: Dict[str, str] = {}
    uses: Dict[str, Set[str]] = {}
    for root, _dirs, names in os.walk(objects):
        for name in names:
            if name.endswith(".o"):
                path = os.path.relpath(os.path.join(root, name), objects)[:-2] + ".c"
                if src is not None and not os.path.exists(os.path.join(src, path)):
                    continue
                defined, used = symbols(os.path.join(root, name))
                for symbol in defined:
                    owner[symbol] = path
                uses[path] = used
    if not uses:
        problems.append(f"{objects}: no object files (build first)")
        return 0
    graph: Dict[str, List[str]] = defaultdict(list)
    for path, used in uses.items():
        callees = sorted({owner[s] for s in used if s in owner and owner[s] != path})
        graph[path] = callees
        for callee in callees:
            here, there = layer_of(path), layer_of(callee)
            if here and there and rank(there) > rank(here):
                names = sorted(s for s in used if owner.get(s) == callee)
                problems.append(f"src/{path} calls up into src/{callee} "
                                f"({there}): {', '.join(names)}")
    cycle = find_cycle(graph)
    if cycle:
        problems.append("files call each other in a circle: " + " -> ".join(cycle))
    return sum(len(v) for v in graph.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default="src")
    parser.add_argument("--objects", help="the build's object files (build/temp-plain/src)")
    args = parser.parse_args(argv)
    problems: List[str] = []
    files = source_files(args.src)
    graph = check_includes(args.src, files, problems)
    cycle = find_cycle(graph)
    if cycle:
        problems.append("headers include each other in a circle: " + " -> ".join(cycle))
    edges = check_calls(args.objects, args.src, problems) if args.objects else 0
    for problem in problems:
        print(problem)
    if problems:
        return 1
    summary = f"layers ok: {len(files)} files, {sum(map(len, graph.values()))} includes"
    if args.objects:
        summary += f", {edges} calls between files"
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
