"""The `taskgrad` command line: `taskgrad demo`, `taskgrad methods [NAME]`, `taskgrad bench
CONFIG...`,
`taskgrad report DIR [--config CONFIG...]`, `taskgrad report LOG.csv` and `taskgrad compile`.

User errors (a missing file, a config with an unknown key, a method that fails) are one message
on stderr and a non-zero exit, never a traceback; Ctrl-C stops with exit status 130 and a line
saying how to resume.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

EXIT_FAILED = 1  # a run or method failed (the others finished and were reported)
EXIT_USAGE = 2  # bad input: a missing file, an invalid config
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it


class UserError(Exception):
    """A problem with what the user asked for: printed as one line, exit status 2."""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("taskgrad")
    except Exception:  # noqa: BLE001 (not installed as a distribution: read the package)
        import taskgrad

        return str(getattr(taskgrad, "__version__", "unknown"))


# ----------------------------------------------------------------------------- demo
def _demo(args: argparse.Namespace) -> int:
    from .demo import main

    main(out_dir=args.out, steps=args.steps, lr=args.lr)
    if not args.quadratics_only:
        from ._warmup import compile_kernels
        from .bench.demo_extra import run_extra

        compile_kernels()  # the timings below then measure the methods, not their first compilation
        run_extra(args.out, quick=args.quick)
    return 0


# ----------------------------------------------------------------------------- compile
def _compile(args: argparse.Namespace) -> int:
    from ._warmup import compile_kernels

    report = compile_kernels(progress=not args.quiet)
    if not report.have_numba:
        print("numba is not installed: nothing to compile (the methods use their torch paths).")
        return 0
    print(
        f"{len(report.compiled)} compiled kernels ready in {report.seconds:.1f} s "
        "(cached on disk: later processes load them in milliseconds)."
    )
    for name in report.not_compiled:
        print(f"not reached by any warm-up call (compiles on first use): {name}", file=sys.stderr)
    for what, err in report.failed.items():
        print(f"warm-up call failed: {what}: {err}", file=sys.stderr)
    return EXIT_FAILED if report.failed or report.not_compiled else 0


# ----------------------------------------------------------------------------- bench
def _load_configs(paths: list[str], overrides: list[str] | None) -> list[Any]:
    """Every config file validated (with the overrides) before any run starts."""
    from .bench.config import load_config

    configs = []
    for p in paths:
        try:
            configs.append(load_config(p, overrides))
        except FileNotFoundError as e:
            raise UserError(str(e).strip("'\"")) from e
        except (ValueError, ImportError) as e:  # ImportError: a YAML config without PyYAML
            raise UserError(str(e)) from e
    return configs


def _selected_methods(entries: list[Any], wanted: list[str] | None) -> list[Any]:
    """The (name, label, kwargs) entries whose label or method name is in ``wanted`` (all when
    None).
    """
    if wanted is None:
        return list(entries)
    return [e for e in entries if e[1] in wanted or e[0] in wanted]


def _check_wanted(configs: list[Any], wanted: list[str] | None) -> None:
    """Every name given to --methods is a method (label or name) of at least one config."""
    if wanted is None:
        return
    known = {x for cfg in configs for e in cfg.methods for x in (e[0], e[1])}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        import difflib

        hints = []
        for w in unknown:
            close = difflib.get_close_matches(w, sorted(known), n=1)
            hints.append(f"{w!r} (did you mean {close[0]!r}?)" if close else repr(w))
        labels = sorted({e[1] for cfg in configs for e in cfg.methods})
        raise UserError(
            f"--methods {', '.join(hints)}: no config has such a method; theirs: "
            f"{', '.join(labels)}."
        )


def _bench_toy(
    cfg: Any, args: argparse.Namespace, say: Callable[[str], None], failures: list[str]
) -> None:
    from .bench.methods import make_method
    from .bench.toy import run_toy, trajectories

    entries = _selected_methods(cfg.methods, args.methods)
    if not entries:
        say(f"[bold]{cfg.name}[/]: none of --methods is in this config; skipped ({cfg.path})")
        return
    say(
        f"[bold]{cfg.name}[/]: CAGrad toy, {len(entries)} methods × 5 starts, {cfg.toy['steps']} "
        f"steps ({cfg.path})"
    )
    if args.dry_run:  # one step of each method from every start: errors of the first step show now
        for name, label, kw in entries:
            try:
                trajectories(
                    functools.partial(make_method, name, kw),
                    steps=1,
                    lr=cfg.toy["lr"],
                    scale=cfg.toy["scale"],
                )
                say(f"  {label}: ok")
            except Exception as e:  # noqa: BLE001 (report every method, then fail)
                failures.append(f"{cfg.name}/{label}: {type(e).__name__}: {e}")
                say(f"  [red]{label}: {type(e).__name__}: {e}[/]")
        return
    data = run_toy(
        Path(args.out),
        cfg.name,
        entries,
        show_progress=not args.quiet,
        resume=not args.restart,
        **cfg.toy,
    )
    if data["reused"]:
        say(
            f"  reused saved trajectories of {', '.join(data['reused'])} (same settings; --restart "
            "recomputes)"
        )
    for label, msg in data["failed"].items():
        failures.append(f"{cfg.name}/{label}: {msg}")
        say(f"  [red]{label} failed: {msg}[/]")


def _run_line(r: Any) -> str:
    """A run's settings as the dry run lists them (rich markup escaped): epochs, batch,
    optimizer, scheduler, validation fraction and selection; then the label settings that are
    set: ``label_fractions``, ``label_counts``, ``label_seed``, and ``absent_primary`` when it is
    not "skip" or some labels are removed (it applies to those runs).
    """
    from rich.markup import escape

    def table(tbl: dict[str, Any]) -> str:
        return "{" + ", ".join(f"{t}={v:g}" for t, v in tbl.items()) + "}"

    parts = [
        r.run_id,
        f" epochs={r.epochs}",
        f"batch={r.batch_size}",
        f"optimizer={r.optimizer['name']}",
        f"scheduler={r.scheduler['name']}",
        f"val_fraction={r.val_fraction:g}",
        f"selection={r.selection['criterion']}",
    ]
    partial = bool(r.label_fractions or r.label_counts)
    if r.label_fractions:
        parts.append(f"label_fractions={table(r.label_fractions)}")
    if r.label_counts:
        parts.append(f"label_counts={table(r.label_counts)}")
    if r.label_seed is not None:
        parts.append(f"label_seed={r.label_seed}")
    if partial or r.absent_primary != "skip":
        parts.append(f"absent_primary={r.absent_primary}")
    return escape(" ".join(parts))


def _bench_train(
    cfg: Any, args: argparse.Namespace, say: Callable[[str], None], failures: list[str]
) -> None:
    import json

    from .bench.runner import check_run, order_runs, run

    runs = order_runs(cfg.runs)  # single-task baselines first: the delta_m selection reads them
    if args.seeds is not None:
        runs = [r for r in runs if r.seed in args.seeds]
    if args.methods is not None:
        keep = {e[1] for e in _selected_methods(cfg.methods, args.methods)}
        runs = [r for r in runs if r.label in keep or r.is_single_task]
    if args.device is not None:
        runs = [replace(r, device=args.device) for r in runs]
    out = Path(args.out)
    say(f"[bold]{cfg.name}[/]: {len(runs)} runs ({cfg.path})")
    if args.dry_run:  # build every run and take one step: errors a run would meet show now
        for r in runs:
            try:
                check_run(r)
                status = "ok"
            except Exception as e:  # noqa: BLE001 (report every run, then fail)
                failures.append(f"{r.run_id}: {type(e).__name__}: {e}")
                status = f"[red]{type(e).__name__}: {e}[/]"
            say(f"  {_run_line(r)}: {status}")
        return
    if cfg.baseline:
        (out / cfg.name).mkdir(parents=True, exist_ok=True)
        (out / cfg.name / "baseline.json").write_text(json.dumps(cfg.baseline, indent=1))
    for r in runs:
        try:
            res = run(r, out, resume=not args.restart, show_progress=not args.quiet)
        except Exception as e:  # noqa: BLE001 (one run's failure must not lose the others)
            failures.append(f"{r.run_id}: {type(e).__name__}: {e}")
            say(f"  [red]{r.run_id} failed: {type(e).__name__}: {e}[/]")
            continue
        final = ", ".join(f"{s['key']}={res['final'][s['key']]:.4f}" for s in res["metric_specs"])
        sel = res.get("selection") or {}
        chosen = (
            f"epoch {sel['epoch']}/{r.epochs} by validation {sel['criterion']}"
            if sel.get("criterion", "last") != "last"
            else f"last epoch ({r.epochs})"
        )
        say(f"  {r.run_id}: {final} at {chosen} ({res['time_per_epoch_s']:.1f} s/epoch)")


def _bench(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(highlight=False)
    configs = _load_configs(args.configs, args.set)
    _check_wanted(configs, args.methods)
    failures: list[str] = []
    for cfg in configs:
        if cfg.kind == "toy":
            _bench_toy(cfg, args, console.print, failures)
        else:
            _bench_train(cfg, args, console.print, failures)
    if not args.dry_run:
        from .bench.report import report

        try:
            path = report(Path(args.out), md_path=args.md, configs=configs, plots=not args.no_plots)
        except FileNotFoundError:  # every run failed: nothing saved to report
            path = None
        if path is not None:
            _show_report(path, console)
            console.print(f"report: {path.resolve()}" + (f" (also {args.md})" if args.md else ""))
            _say_stale(path, console.print)
    if failures:
        what = "failed the check" if args.dry_run else "failed (the others are saved and reported)"
        console.print(
            f"[red]{len(failures)} run{'s' if len(failures) != 1 else ''} {what}:[/]",
            highlight=False,
        )
        for f in failures:
            console.print(f"  {f}", markup=False)
        return EXIT_FAILED
    return 0


def _show_report(report_md: Path, console: Any) -> None:
    """Print the report's tables (not its plot links) to the console."""
    from rich.markdown import Markdown

    text = "\n".join(
        line for line in report_md.read_text().splitlines() if not line.startswith("![")
    )
    console.print(Markdown(text))


def _say_stale(report_md: Path, say: Callable[[str], object]) -> None:
    """One line naming how many stale runs (another config) the report left out, if any."""
    import json

    n = json.loads(report_md.with_name("report.json").read_text()).get("excluded_stale", 0)
    if n:
        say(
            f"{n} stale run{'s' if n != 1 else ''} (another config) left out of the tables: see "
            "“stale runs” in the report; rerun them with `taskgrad bench CONFIG` to include them."
        )


# ----------------------------------------------------------------------------- report
def _report(args: argparse.Namespace) -> int:
    from rich.console import Console

    target = Path(args.path)
    if not target.exists():
        raise UserError(
            f"{str(target)!r} does not exist: give a folder of `taskgrad bench` runs or a CSV "
            "training "
            "log written by taskgrad.tracking.CSVLogger."
        )
    console = Console(highlight=False)
    if target.is_file():  # a CSV training log: weights, gradient cosines, κ(G) over training
        import warnings

        from .tracking import NothingToPlotWarning
        from .tracking import report as log_report

        out = Path(args.out) if args.out else target.with_suffix("")
        try:
            with warnings.catch_warnings(record=True) as caught:  # nothing to plot: say why, exit 0
                warnings.simplefilter("always", NothingToPlotWarning)
                written = log_report(target, out)
        except ValueError as e:
            raise UserError(str(e)) from e
        for w in caught:
            if issubclass(w.category, NothingToPlotWarning):
                console.print(str(w.message), markup=False)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        for p in written:
            console.print(str(p), markup=False)
        return 0
    from .bench.report import report

    configs = _load_configs(args.config or [], None)
    try:
        path = report(target, md_path=args.md, configs=configs, plots=not args.no_plots)
    except FileNotFoundError as e:
        raise UserError(str(e)) from e
    _show_report(path, console)
    console.print(
        f"report: {path.resolve()}" + (f" (also {args.md})" if args.md else ""), markup=False
    )
    _say_stale(path, console.print)
    return 0


# ----------------------------------------------------------------------------- methods
def _factory(name: str) -> Any:
    """The class or function the registry builds ``name`` with."""
    from .methods import registry

    lookup = getattr(registry, "lookup", None)
    if lookup is not None:
        return lookup(name).factory
    return type(registry.get(name))


def _parameters(name: str) -> str:
    """``c=0.4, rescale=1`` from the signature of the method's factory ("" without parameters)."""
    try:
        params = inspect.signature(_factory(name)).parameters.values()
    except (TypeError, ValueError, KeyError):
        return ""
    return ", ".join(
        p.name + ("" if p.default is p.empty else f"={p.default!r}")
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    )


def _describe(name: str) -> str:
    """Name, description, paper, parameters with defaults (the registry's describe() when it has
    one).
    """
    from .methods import registry

    describe = getattr(registry, "describe", None)
    if describe is not None:
        return str(describe(name))
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    doc = registry.available()[key]
    factory = _factory(key)
    paper = (inspect.getdoc(factory) or "").split("\n", 1)[0]
    return "\n".join(
        [f"{key}: {doc}", f"  paper: {paper}", f"  parameters: {_parameters(key) or 'none'}"]
    )


def _methods(args: argparse.Namespace) -> int:
    from . import methods

    if args.name:
        try:
            print(_describe(args.name))
        except KeyError as e:
            raise UserError(str(e.args[0]) if e.args else str(e)) from e
        return 0
    rows = methods.available()
    width = max(len(n) for n in rows)
    for name, doc in rows.items():
        print(f"{name:<{width}}  {doc}")
        params = _parameters(name)
        print(f"{'':<{width}}  parameters: {params or 'none'}")
    print("\n`taskgrad methods NAME` shows a method's parameters, defaults and paper.")
    return 0


# ----------------------------------------------------------------------------- parser
def _add_demo(sub: Any) -> None:
    demo = sub.add_parser("demo", help="run the demo and write plots and a table to --out")
    demo.add_argument(
        "--out", default="taskgrad-demo", help="output folder (default: taskgrad-demo)"
    )
    demo.add_argument(
        "--steps", type=int, default=60, help="SGD steps of the two-quadratics part (default: 60)"
    )
    demo.add_argument(
        "--lr",
        type=float,
        default=0.05,
        help="learning rate of the two-quadratics part (default: 0.05)",
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help="fewer toy steps and a tiny MultiMNIST run (smoke test)",
    )
    demo.add_argument("--quadratics-only", action="store_true", help="only the two-quadratics part")
    demo.set_defaults(func=_demo)


def _add_bench(sub: Any) -> None:
    bench = sub.add_parser(
        "bench", help="run benchmark configs (TOML or YAML) and write results, tables and plots"
    )
    bench.add_argument(
        "configs",
        nargs="+",
        help="config files (.toml, .yaml, .yml), e.g. benchmarks/configs/*.toml; "
        "schema: benchmarks/configs/README.md",
    )
    bench.add_argument(
        "--out",
        default="benchmarks/out/bench",
        help="results folder (default: benchmarks/out/bench)",
    )
    bench.add_argument("--md", default=None, help="also write the Markdown report to this file")
    bench.add_argument("--seeds", type=int, nargs="+", default=None, help="only these seeds")
    bench.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="only these methods (labels or names; single-task baselines kept)",
    )
    bench.add_argument(
        "--set",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="override a config key for this run, e.g. --set epochs=1 --set data.n_train=512 "
        "--set toy.steps=50 (VALUE is a TOML value; repeatable)",
    )
    bench.add_argument("--device", default=None, help="override the configs' device (cpu, cuda)")
    bench.add_argument(
        "--restart", action="store_true", help="ignore saved checkpoints and results"
    )
    bench.add_argument(
        "--dry-run",
        action="store_true",
        help="build every run (data, model, method) and take one step on a copy, saving nothing",
    )
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    bench.add_argument(
        "--no-plots",
        action="store_true",
        help="write the report's tables without its plots (faster)",
    )
    bench.set_defaults(func=_bench)


def _add_report(sub: Any) -> None:
    rep = sub.add_parser(
        "report",
        help="rebuild tables and plots from saved runs in a folder, or plot a CSV training log",
    )
    rep.add_argument(
        "path",
        help="a folder of `taskgrad bench` runs, or a CSV written by taskgrad.tracking.CSVLogger",
    )
    rep.add_argument(
        "--md", default=None, help="(runs) also write the Markdown report to this file"
    )
    rep.add_argument(
        "--config",
        nargs="+",
        default=None,
        help="(runs) the config files the runs should be of: a saved run of another config is "
        "left out of the tables and listed as stale (default: per experiment, the runs of "
        "another protocol than its newest run are)",
    )
    rep.add_argument(
        "--out", default=None, help="(log) folder for the plots (default: next to the log)"
    )
    rep.add_argument(
        "--no-plots", action="store_true", help="(runs) write the tables without the plots (faster)"
    )
    rep.set_defaults(func=_report)


def _add_methods(sub: Any) -> None:
    meth = sub.add_parser("methods", help="list the methods with their parameters, or describe one")
    meth.add_argument(
        "name",
        nargs="?",
        default=None,
        help="a method name (e.g. cagrad): its parameters, defaults and paper",
    )
    meth.set_defaults(func=_methods)


def _add_compile(sub: Any) -> None:
    comp = sub.add_parser(
        "compile", help="compile the numba kernels now instead of on first use (progress shown)"
    )
    comp.add_argument("--quiet", action="store_true", help="no progress bar")
    comp.set_defaults(func=_compile)


SUBCOMMANDS: list[Callable[[Any], None]] = [
    _add_demo,
    _add_methods,
    _add_bench,
    _add_report,
    _add_compile,
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `taskgrad` command (one ``_add_*`` function per subcommand)."""
    parser = argparse.ArgumentParser(prog="taskgrad", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"taskgrad {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


@contextmanager
def _plain_warnings() -> Iterator[None]:
    """Warnings shown as ``warning: message`` (no source line) while the command runs."""

    def plain(message: Any, category: type, filename: str, lineno: int, line: Any = None) -> str:
        return f"warning: {message}\n"

    saved = warnings.formatwarning
    warnings.formatwarning = plain
    try:
        yield
    finally:
        warnings.formatwarning = saved


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `taskgrad` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        with _plain_warnings():
            return int(args.func(args))
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UserError as e:
        print(f"taskgrad {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
