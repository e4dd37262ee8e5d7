"""The `taskgrad` command line: `taskgrad demo`, `taskgrad methods`, `taskgrad bench CONFIG...`,
`taskgrad report DIR [--config CONFIG...]`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    from .demo import main

    main(out_dir=args.out, steps=args.steps, lr=args.lr)
    if not args.quadratics_only:
        from .bench.demo_extra import run_extra

        run_extra(args.out, quick=args.quick)
    return 0


def _bench(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from rich.console import Console

    from .bench.config import load_config
    from .bench.report import report
    from .bench.runner import order_runs, run
    from .bench.toy_runner import run_toy

    console = Console()
    configs = [load_config(p) for p in args.configs]  # validate every file before running any
    out = Path(args.out)
    for cfg in configs:
        if cfg.kind == "toy":
            from .bench.config import _method_entries

            raw_methods = cfg.toy.get("methods")
            entries = _method_entries(raw_methods, cfg.path or cfg.name) if raw_methods else None
            kw = {k: v for k, v in cfg.toy.items() if k != "methods"}
            console.print(f"[bold]{cfg.name}[/]: toy trajectories ({cfg.path})")
            if args.dry_run:
                continue
            run_toy(out, cfg.name, entries, show_progress=not args.quiet, **kw)
            continue
        runs = order_runs(cfg.runs)  # single-task baselines first: the delta_m selection reads them
        if args.seeds is not None:
            runs = [r for r in runs if r.seed in args.seeds]
        if args.methods is not None:
            runs = [r for r in runs if r.label in args.methods or r.method in args.methods or r.is_single_task]
        if cfg.baseline:
            (out / cfg.name).mkdir(parents=True, exist_ok=True)
            (out / cfg.name / "baseline.json").write_text(json.dumps(cfg.baseline, indent=1))
        console.print(f"[bold]{cfg.name}[/]: {len(runs)} runs ({cfg.path})")
        if args.dry_run:
            for r in runs:
                console.print(f"  {r.run_id}  epochs={r.epochs} batch={r.batch_size} optimizer={r.optimizer} "
                              f"scheduler={r.scheduler} val_fraction={r.val_fraction:g} selection={r.selection}")
            continue
        for r in runs:
            if args.device is not None:
                r = replace(r, device=args.device)
            res = run(r, out, resume=not args.restart, show_progress=not args.quiet)
            final = ", ".join(f"{s['key']}={res['final'][s['key']]:.4f}" for s in res["metric_specs"])
            sel = res.get("selection") or {}
            chosen = (f"epoch {sel['epoch']}/{r.epochs} by validation {sel['criterion']}"
                      if sel.get("criterion", "last") != "last" else f"last epoch ({r.epochs})")
            console.print(f"  {r.run_id}: {final} at {chosen} ({res['time_per_epoch_s']:.1f} s/epoch)")
    if not args.dry_run:
        path = report(out, md_path=args.md, configs=configs)  # runs of other configs: listed as stale
        console.print(f"report: {path.resolve()}" + (f" (also {args.md})" if args.md else ""))
        _say_stale(path, console.print)
    return 0


def _say_stale(report_md: Path, say: Callable[[str], object]) -> None:
    """One line naming how many stale runs (another config) the report left out, if any."""
    import json

    n = json.loads(report_md.with_name("report.json").read_text()).get("excluded_stale", 0)
    if n:
        say(f"{n} stale run{'s' if n != 1 else ''} (another config) left out of the tables: see "
            "“stale runs” in the report; rerun them with `taskgrad bench CONFIG` to include them.")


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    target = Path(args.path)
    if target.is_file():  # a CSV training log: weights, gradient cosines, κ(G) over training
        import warnings

        from .tracking import NothingToPlotWarning
        from .tracking import report as log_report

        out = Path(args.out) if args.out else target.with_suffix("")
        with warnings.catch_warnings(record=True) as caught:  # an empty log: its message, no source line
            warnings.simplefilter("always", NothingToPlotWarning)
            written = log_report(target, out)
        for w in caught:
            print(w.message)
        for p in written:
            print(p)
        return 0
    from .bench.config import load_config
    from .bench.report import report

    configs = [load_config(p) for p in args.config or ()]
    path = report(target, md_path=args.md, configs=configs)
    print(f"report: {path.resolve()}" + (f" (also {args.md})" if args.md else ""))
    _say_stale(path, print)
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
    demo.add_argument("--quick", action="store_true", help="fewer toy steps and a tiny MultiMNIST run (smoke test)")
    demo.add_argument("--quadratics-only", action="store_true", help="only the two-quadratics part")
    demo.set_defaults(func=_demo)
    bench = sub.add_parser("bench", help="run benchmark configs (TOML or YAML) and write results, tables and plots")
    bench.add_argument("configs", nargs="+",
                       help="config files (.toml, .yaml, .yml), e.g. benchmarks/configs/*.toml; "
                            "schema: benchmarks/configs/README.md")
    bench.add_argument("--out", default="benchmarks/out/bench", help="results folder (default: benchmarks/out/bench)")
    bench.add_argument("--md", default=None, help="also write the Markdown report to this file")
    bench.add_argument("--seeds", type=int, nargs="+", default=None, help="only these seeds")
    bench.add_argument("--methods", nargs="+", default=None, help="only these method labels (single-task runs kept)")
    bench.add_argument("--device", default=None, help="override the configs' device (cpu, cuda)")
    bench.add_argument("--restart", action="store_true", help="ignore saved checkpoints and results")
    bench.add_argument("--dry-run", action="store_true", help="list the runs without training")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    bench.set_defaults(func=_bench)
    rep = sub.add_parser(
        "report",
        help="rebuild tables and plots from saved runs in a folder, or plot a CSV training log",
    )
    rep.add_argument("path", help="a folder of `taskgrad bench` runs, or a CSV written by taskgrad.tracking.CSVLogger")
    rep.add_argument("--md", default=None, help="(runs) also write the Markdown report to this file")
    rep.add_argument("--config", nargs="+", default=None,
                     help="(runs) the config files the runs should be of: a saved run of another config is "
                          "left out of the tables and listed as stale (default: per experiment, the runs of "
                          "another protocol than its newest run are)")
    rep.add_argument("--out", default=None, help="(log) folder for the plots (default: next to the log)")
    rep.set_defaults(func=_report)
    meth = sub.add_parser("methods", help="list the methods with a one-line description each")
    meth.set_defaults(func=_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `taskgrad` command."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
