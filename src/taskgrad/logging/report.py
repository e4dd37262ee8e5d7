"""``python -m taskgrad.logging.report LOG.csv --out DIR``: plot a taskgrad CSV training log.

Meant to back a ``taskgrad report`` sub-command: ``add_report_parser(subparsers)`` adds it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .plots import report

__all__ = ["add_report_parser", "main"]


def _run(args: argparse.Namespace) -> int:
    for p in report(args.log, args.out):
        print(p)
    return 0


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``report`` sub-command to an argparse sub-parser collection."""
    rep = subparsers.add_parser("report", help="plot a CSV training log (weights, gradient cosines, κ(G))")
    rep.add_argument("log", help="CSV written by taskgrad.logging.CSVLogger")
    rep.add_argument("--out", default="taskgrad-report", help="output folder (default: taskgrad-report)")
    rep.set_defaults(func=_run)
    return rep


def main(argv: list[str] | None = None) -> int:
    """Entry point: plot ``LOG.csv`` into ``--out``."""
    parser = argparse.ArgumentParser(prog="taskgrad report", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    rep = add_report_parser(sub)
    args = rep.parse_args(argv)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
