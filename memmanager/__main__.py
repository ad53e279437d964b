"""The command line: ``python -m memmanager <command>``.

Commands:

  demo    the guided tour (memmanager/tour/): the six examples of Perl's
          Task::MemManager, in Python

``python -m memmanager --help`` lists the commands; an unknown or missing
command prints the usage on stderr and exits with status 2.
"""

import argparse
import sys

import memmanager


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m memmanager",
        description="memmanager: a memory manager for low-level code "
                    "(pluggable allocators, adopted memory, zero-copy "
                    "regions, delayed GC and death stubs).",
    )
    parser.add_argument("--version", action="version",
                        version=f"memmanager {memmanager.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="command",
                                     title="commands", required=True)
    commands.add_parser(
        "demo",
        help="a guided tour: the six examples of Perl's Task::MemManager, in Python",
        description="Walk through the six examples of Perl's Task::MemManager "
                    "documentation in Python, showing each step's code and output.",
    )
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from memmanager.tour import main as tour
        return tour()
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse checked it


if __name__ == "__main__":
    sys.exit(main())
