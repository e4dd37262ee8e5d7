"""The `taskgrad` command line: `taskgrad demo`, `taskgrad methods`."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import main

    main(out_dir=args.out, steps=args.steps, lr=args.lr)
    return 0


def _methods(args: argparse.Namespace) -> int:
    from . import methods

    rows = methods.available()
    width = max(len(n) for n in rows)
    for name, doc in rows.items():
        print(f"{name:<{width}}  {doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `taskgrad` command."""
    parser = argparse.ArgumentParser(prog="taskgrad", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the demo and write plots and a table to --out")
    demo.add_argument("--out", default="taskgrad-demo", help="output folder (default: taskgrad-demo)")
    demo.add_argument("--steps", type=int, default=60)
    demo.add_argument("--lr", type=float, default=0.05)
    demo.set_defaults(func=_demo)
    meth = sub.add_parser("methods", help="list the methods with a one-line description each")
    meth.set_defaults(func=_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `taskgrad` command."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
