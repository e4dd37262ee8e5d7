"""Benchmark configs: one TOML or YAML file describes an experiment, expanded into runs (method ×
seed).

The schema (all keys but ``name``, ``dataset`` and ``methods`` optional; the full reference with
examples is ``benchmarks/configs/README.md``)::

    name = "multimnist"            # experiment name: results go to OUT/<name>/<label>/seed<s>/
    dataset = "multimnist"         # a registered problem (taskgrad.bench.available_problems())
    methods = ["mean", "mgda", {name = "cagrad", c = 0.4}, {name = "primary-aux", label = "pa"}]
    seeds = [0, 1, 2]
    epochs = 10
    batch_size = 256
    single_task = true             # also train one single-task baseline per task (for Δm)
    source = "full"                # Gram source: full | representation | jacobian | sketch | auto
                                   # (sketch: 32 random directions, forward-mode JVPs of the
                                   # losses; the model's forward must be deterministic)
    device = "auto"                # auto | cpu | cuda | cuda:N
    max_steps_per_epoch = 0        # 0: the whole training set each epoch
    checkpoint_every = 200         # steps between checkpoints (and at every epoch end)
    eval_batch_size = 1024
    val_fraction = 0.0             # carve this fraction of the training set (by seed) for
    validation;
                                   # 0: the data set's own validation split if it has one, else none
    label_fractions = {left = 0.05}  # keep labels of this fraction of a task's training examples
    label_counts = {right = 2000}  # ... or this number of them
    label_seed = 0                 # seed of that draw (default: the run's seed)
    absent_primary = "skip"        # a batch without the primary's label: "skip" or a method name
    [data]                         # keyword arguments of the problem
    [model]                        # keyword arguments of the problem's model
    [optimizer]                    # name = "adam" | "sgd" | "adamw", lr, weight_decay, momentum
    [scheduler]                    # name = "none" | "step" | "cosine" | "plateau" (+ its
    parameters)
    [selection]                    # criterion = "last" | "val_loss" | "metric" | "primary" |
    "delta_m"
    [baseline]                     # optional fixed single-task metrics {"task/metric" = value}

YAML files (``.yaml``/``.yml``, read with PyYAML) use the same keys; anchors, aliases and merge
keys (``<<: *anchor``) are resolved before the checks. Every key is checked: an unknown key (also
in [data] and [model], against the problem's signatures) or a value of the wrong type is a
``ValueError`` naming the file and the key, with the closest allowed key when there is one.

``kind = "toy"`` configs run the CAGrad toy (:mod:`taskgrad.bench.toy`): ``methods`` as above,
and a [toy] table with ``steps``, ``lr``, ``scale`` and ``record_every``.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "ExperimentConfig",
    "MethodEntry",
    "RunConfig",
    "apply_overrides",
    "load_config",
    "parse_config",
    "read_config_file",
    "run_id",
    "single_task_config",
]

MethodEntry = tuple[str, str, dict[str, Any]]  # (registry name, label, keyword arguments)

_TOP_KEYS = {
    "name",
    "dataset",
    "kind",
    "methods",
    "seeds",
    "epochs",
    "batch_size",
    "single_task",
    "source",
    "device",
    "max_steps_per_epoch",
    "checkpoint_every",
    "data",
    "model",
    "optimizer",
    "baseline",
    "description",
    "eval_batch_size",
    "toy",
    "scheduler",
    "val_fraction",
    "selection",
    "label_fractions",
    "label_counts",
    "label_seed",
    "absent_primary",
}
_OPT_KEYS = {"name", "lr", "weight_decay", "momentum"}
TOY_DEFAULTS: dict[str, Any] = {"steps": 700, "lr": 0.05, "scale": 0.1, "record_every": 5}
SCHEDULERS: dict[str, dict[str, Any]] = {  # name → {parameter: default}; None: required/derived
    "none": {},
    "step": {"step_size": None, "milestones": None, "gamma": 0.1},
    "cosine": {"t_max": None, "eta_min": 0.0},
    "plateau": {
        "factor": 0.1,
        "patience": 10,
        "threshold": 1e-4,
        "threshold_mode": "rel",
        "cooldown": 0,
        "min_lr": 0.0,
        "monitor": "val_loss",
    },
}
CRITERIA = ("last", "val_loss", "metric", "primary", "delta_m")
MONITORS = ("val_loss", "criterion", "train_loss")
# Defaults of the fields added after the first release: a run at these defaults keeps its old
# fingerprint, so saved results and checkpoints of older versions are still recognized.
NEW_FIELD_DEFAULTS: dict[str, Any] = {
    "scheduler": {"name": "none"},
    "val_fraction": 0.0,
    "selection": {"criterion": "last"},
    "label_fractions": {},
    "label_counts": {},
    "label_seed": None,
    "absent_primary": "skip",
}


_UNSAFE = str.maketrans({c: "-" for c in ':\\/*?"<>|'})


def run_id(experiment: str, label: str, seed: int) -> str:
    r"""``<experiment>/<label>/seed<seed>`` with ``:`` and ``\/*?"<>|`` in the names replaced by
    ``-``.
    """
    return f"{experiment.translate(_UNSAFE)}/{label.translate(_UNSAFE)}/seed{seed}"


@dataclass(frozen=True)
class RunConfig:
    """One training run: a problem, a model, a method, an optimizer, epochs and a seed.

    ``method`` is a registry name of :mod:`taskgrad.methods`, or ``"single-task:<i>"`` for the
    single-task baseline of task i. ``label`` names the run in tables and folders. ``scheduler``
    and ``selection`` are the normalized [scheduler] and [selection] tables (defaults filled in).
    ``label_fractions`` ({task: f}, 0 < f < 1; tasks not named keep every label) keeps the labels
    of round(f·n) of a task's n labelled training examples, ``label_counts`` ({task: m}) keeps m
    of them, drawn with ``label_seed`` (None: the run's seed; see :mod:`taskgrad.bench.labels`).
    ``absent_primary``: what a primary/auxiliary method does on a batch without a labelled
    example of its primary task (task 0): ``"skip"`` (no step) or a method name, applied to the
    present auxiliaries (``primary-only`` always skips).
    """

    experiment: str
    dataset: str
    method: str
    label: str
    seed: int
    epochs: int = 1
    batch_size: int = 256
    method_kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = "full"
    device: str = "auto"
    max_steps_per_epoch: int = 0
    checkpoint_every: int = 200
    eval_batch_size: int = 1024
    data: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=lambda: {"name": "adam", "lr": 1e-3})
    scheduler: dict[str, Any] = field(default_factory=lambda: {"name": "none"})
    val_fraction: float = 0.0
    selection: dict[str, Any] = field(default_factory=lambda: {"criterion": "last"})
    label_fractions: dict[str, float] = field(default_factory=dict)
    label_counts: dict[str, int] = field(default_factory=dict)
    label_seed: int | None = None
    absent_primary: str = "skip"

    @property
    def labels_seed(self) -> int:
        """The seed of the labelled-subset draw: ``label_seed``, or the run's seed when None."""
        return self.seed if self.label_seed is None else self.label_seed

    @property
    def run_id(self) -> str:
        r"""Relative folder of the run: ``<experiment>/<label>/seed<seed>``, with the characters
        that are not allowed in a file name on some systems (``:`` and ``\/*?"<>|``) replaced by
        ``-``.
        """
        return run_id(self.experiment, self.label, self.seed)

    @property
    def legacy_run_id(self) -> str:
        """The folder of the run as older versions named it (the label unchanged, e.g.
        ``single-task:left``).
        """
        return f"{self.experiment}/{self.label}/seed{self.seed}"

    @property
    def is_single_task(self) -> bool:
        return self.method.startswith("single-task:")

    @property
    def single_task_index(self) -> int | None:
        """i for ``single-task:<i>``, else None."""
        return int(self.method.split(":", 1)[1]) if self.is_single_task else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes the result except ``device`` (a resumed run must match).
        Fields added later are left out while at their defaults (older saved runs keep matching).
        """
        d = self.to_dict()
        d.pop("device")
        for key, default in NEW_FIELD_DEFAULTS.items():
            if d[key] == default:
                d.pop(key)
        return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def single_task_config(cfg: RunConfig, index: int, task: str) -> RunConfig:
    """The single-task baseline of task ``index`` (named ``task``) that goes with ``cfg``: the run
    ``single_task = true`` adds for the same experiment, seed and settings (w = e_index).
    """
    return replace(
        cfg, method=f"single-task:{index}", label=f"single-task:{task}", method_kwargs={}
    )


@dataclass(frozen=True)
class ExperimentConfig:
    """A parsed config file: its runs, its method entries (name, label, arguments), the toy
    settings (``kind = "toy"``: steps, lr, scale, record_every) and a fixed baseline.
    """

    name: str
    kind: str
    runs: list[RunConfig]
    baseline: dict[str, float]
    toy: dict[str, Any]
    path: str | None = None
    methods: list[MethodEntry] = field(default_factory=list)


def _err(where: str, msg: str) -> ValueError:
    return ValueError(f"{where}: {msg}")


def _check_keys(keys: Any, allowed: Any, where: str, table: str) -> None:
    """A ValueError for the first key of ``keys`` not in ``allowed``, naming the closest allowed
    key.
    """
    import difflib

    allowed = sorted(allowed)
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise _err(
                where,
                f"unknown key {key!r} in {table}.{hint} Allowed: {', '.join(allowed) or '(none)'}.",
            )


def _tname(v: Any) -> str:
    return type(v).__name__


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _table(raw: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    v = raw.get(key, {})
    if v is None:  # YAML `key:` with nothing after it
        v = {}
    if not isinstance(v, dict):
        raise _err(where, f"[{key}] must be a table (mapping), got {v!r} ({_tname(v)}).")
    bad = [k for k in v if not isinstance(k, str)]
    if bad:
        raise _err(where, f"[{key}] keys must be strings, got {bad!r}.")
    return v


def _number(
    tbl: dict[str, Any],
    key: str,
    where: str,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    v = tbl[key]
    rng = (
        ("(" if lo_open else "[")
        + ("-inf" if lo is None else f"{lo:g}")
        + ", "
        + ("inf" if hi is None else f"{hi:g}")
        + (")" if hi_open or hi is None else "]")
    )
    if not _is_num(v) or not math.isfinite(v):
        raise _err(where, f"'{key}' must be a number in {rng}, got {v!r} ({_tname(v)}).")
    if (lo is not None and (v < lo or (lo_open and v == lo))) or (
        hi is not None and (v > hi or (hi_open and v == hi))
    ):
        raise _err(where, f"'{key}' must be in {rng}, got {v!r}.")
    return float(v)


def _int(tbl: dict[str, Any], key: str, where: str, lo: int) -> int:
    v = tbl[key]
    if not _is_int(v) or v < lo:
        raise _err(where, f"'{key}' must be an int ≥ {lo}, got {v!r} ({_tname(v)}).")
    return int(v)


def _method_entries(raw: Any, where: str) -> list[tuple[str, str, dict[str, Any]]]:
    if not isinstance(raw, list) or not raw:
        raise _err(
            where, "'methods' must be a non-empty list of names or {name = ..., ...} tables."
        )
    out: list[tuple[str, str, dict[str, Any]]] = []
    for m in raw:
        if isinstance(m, str):
            out.append((m, m, {}))
        elif isinstance(m, dict) and isinstance(m.get("name"), str):
            if "label" in m and not isinstance(m["label"], str):
                raise _err(
                    where,
                    f"method entry {m!r}: 'label' must be a string, got {_tname(m['label'])}.",
                )
            kw = {k: v for k, v in m.items() if k not in ("name", "label")}
            label = m.get("label") or (
                m["name"]
                if not kw
                else m["name"] + "-" + "-".join(f"{k}{v}" for k, v in sorted(kw.items()))
            )
            out.append((m["name"], str(label), kw))
        else:
            raise _err(where, f"method entry {m!r} must be a name or a table with a 'name' key.")
    labels = [lbl for _, lbl, _ in out]
    if len(set(labels)) != len(labels):
        raise _err(where, f"two methods share a label in {labels}; give them distinct 'label's.")
    return out


def _optimizer(raw: dict[str, Any], where: str) -> dict[str, Any]:
    opt = {"name": "adam", "lr": 1e-3, **_table(raw, "optimizer", where)}
    _check_keys(opt, _OPT_KEYS, where, "[optimizer]")
    if opt["name"] not in ("adam", "adamw", "sgd"):
        raise _err(where, f"optimizer name must be 'adam', 'adamw' or 'sgd', got {opt['name']!r}.")
    w = f"{where}: [optimizer]"
    if not _is_num(opt["lr"]) or opt["lr"] <= 0:
        raise _err(
            where,
            f"optimizer lr must be a positive number, got {opt['lr']!r} ({_tname(opt['lr'])}).",
        )
    if "weight_decay" in opt:
        _number(opt, "weight_decay", w, lo=0.0)
    if "momentum" in opt:
        _number(opt, "momentum", w, lo=0.0, hi=1.0, hi_open=True)
    return opt


def parse_scheduler(
    raw: dict[str, Any] | None, epochs: int, lr: float, where: str = "config"
) -> dict[str, Any]:
    """Validate a [scheduler] table and fill its defaults (see ``SCHEDULERS``).

    none: constant lr. step: lr·γ^⌊e/step_size⌋, or lr·γ^(number of milestones ≤ e) after epoch e.
    cosine: η_min + (lr − η_min)(1 + cos(π e / t_max))/2 (t_max defaults to ``epochs``).
    plateau: torch's ReduceLROnPlateau (mode "min") on ``monitor``, stepped once per epoch.
    """
    tbl = dict(raw or {})
    w = f"{where}: [scheduler]"
    name = tbl.pop("name", "none")
    if name not in SCHEDULERS:
        raise _err(where, f"[scheduler] name must be one of {list(SCHEDULERS)}, got {name!r}.")
    allowed = SCHEDULERS[name]
    _check_keys(tbl, allowed, where, f"[scheduler] (name = {name!r})")
    spec: dict[str, Any] = {"name": name}
    if name == "step":
        if ("step_size" in tbl) == ("milestones" in tbl):
            raise _err(
                where,
                "[scheduler] name = 'step' needs exactly one of 'step_size' (decay every n epochs) "
                "or 'milestones' (a list of epochs).",
            )
        if "step_size" in tbl:
            spec["step_size"] = _int(tbl, "step_size", w, 1)
        else:
            ms = tbl["milestones"]
            if (
                not isinstance(ms, list)
                or not ms
                or not all(_is_int(m) and m >= 1 for m in ms)
                or ms != sorted(set(ms))
            ):
                raise _err(
                    where,
                    "[scheduler] 'milestones' must be a non-empty increasing list of epochs ≥ 1, "
                    f"got {ms!r}.",
                )
            spec["milestones"] = list(ms)
        spec["gamma"] = _number(
            {"gamma": tbl.get("gamma", 0.1)}, "gamma", w, lo=0.0, hi=1.0, lo_open=True
        )
    elif name == "cosine":
        spec["t_max"] = _int({"t_max": tbl.get("t_max", epochs)}, "t_max", w, 1)
        spec["eta_min"] = _number({"eta_min": tbl.get("eta_min", 0.0)}, "eta_min", w, lo=0.0)
        if spec["eta_min"] >= lr:
            raise _err(
                where,
                f"[scheduler] eta_min = {spec['eta_min']} must be below the optimizer lr = {lr}.",
            )
    elif name == "plateau":
        full = {**allowed, **tbl}
        spec["factor"] = _number(full, "factor", w, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        spec["patience"] = _int(full, "patience", w, 0)
        spec["threshold"] = _number(full, "threshold", w, lo=0.0)
        if full["threshold_mode"] not in ("rel", "abs"):
            raise _err(
                where,
                "[scheduler] threshold_mode must be 'rel' or 'abs', got "
                f"{full['threshold_mode']!r}.",
            )
        spec["threshold_mode"] = full["threshold_mode"]
        spec["cooldown"] = _int(full, "cooldown", w, 0)
        spec["min_lr"] = _number(full, "min_lr", w, lo=0.0)
        if full["monitor"] not in MONITORS:
            raise _err(
                where,
                f"[scheduler] monitor must be one of {list(MONITORS)}, got {full['monitor']!r}.",
            )
        spec["monitor"] = full["monitor"]
    return spec


def parse_selection(
    raw: dict[str, Any] | None, tasks: list[str] | None, where: str = "config"
) -> dict[str, Any]:
    """Validate a [selection] table: ``criterion`` (one of ``CRITERIA``) and, for ``"metric"``,
    ``metric = "<task>/<name>"`` (a validation metric; its direction comes from the problem).
    """
    tbl = dict(raw or {})
    crit = tbl.pop("criterion", "last")
    if crit not in CRITERIA:
        raise _err(where, f"[selection] criterion must be one of {list(CRITERIA)}, got {crit!r}.")
    allowed = {"metric"} if crit == "metric" else set()
    unknown = set(tbl) - allowed
    if unknown:
        raise _err(
            where,
            f"[selection] criterion = {crit!r} does not take {sorted(unknown)}"
            + ("; 'metric' goes with criterion = 'metric'." if "metric" in unknown else "."),
        )
    spec: dict[str, Any] = {"criterion": crit}
    if crit == "metric":
        m = tbl.get("metric")
        if not isinstance(m, str) or "/" not in m:
            raise _err(
                where,
                f"[selection] criterion = 'metric' needs metric = \"<task>/<name>\", got {m!r}.",
            )
        if tasks is not None and m.split("/", 1)[0] not in tasks:
            raise _err(
                where,
                f"[selection] metric {m!r}: task {m.split('/', 1)[0]!r} is not one of {tasks}.",
            )
        spec["metric"] = m
    return spec


def parse_config(
    raw: dict[str, Any], where: str = "config", check_methods: bool = True
) -> ExperimentConfig:
    """Validate a config mapping (as read from TOML or YAML) and expand it into runs."""
    if not isinstance(raw, dict):
        raise _err(where, f"a config is a table (mapping) of keys, got {_tname(raw)}.")
    nonstr = [k for k in raw if not isinstance(k, str)]
    if nonstr:
        raise _err(where, f"keys must be strings, got {nonstr!r}.")
    _check_keys(raw, _TOP_KEYS, where, "the config's top level")
    for key in ("name", "dataset"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise _err(where, f"'{key}' must be a non-empty string, got {raw.get(key)!r}.")
    if "description" in raw and not isinstance(raw["description"], str):
        raise _err(where, f"'description' must be a string, got {_tname(raw['description'])}.")
    kind = raw.get("kind", "train")
    if kind not in ("train", "toy"):
        raise _err(where, f"'kind' must be 'train' or 'toy', got {kind!r}.")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) for s in seeds):
        raise _err(where, f"'seeds' must be a non-empty list of ints, got {seeds!r}.")
    if len(set(seeds)) != len(seeds):
        raise _err(where, f"'seeds' has duplicates: {seeds!r}.")
    ints = {
        "epochs": 1,
        "batch_size": 256,
        "max_steps_per_epoch": 0,
        "checkpoint_every": 200,
        "eval_batch_size": 1024,
    }
    vals: dict[str, int] = {}
    for key, default in ints.items():
        v = raw.get(key, default)
        if not _is_int(v) or v < (0 if key == "max_steps_per_epoch" else 1):
            raise _err(
                where,
                f"'{key}' must be a "
                f"{'non-negative' if key == 'max_steps_per_epoch' else 'positive'} int, "
                f"got {v!r} ({_tname(v)}).",
            )
        vals[key] = v
    single_task = raw.get("single_task", False)
    if not isinstance(single_task, bool):
        raise _err(
            where,
            f"'single_task' must be true or false, got {single_task!r} ({_tname(single_task)}).",
        )
    device = raw.get("device", "auto")
    if not isinstance(device, str) or not (
        device in ("auto", "cpu", "mps") or device.split(":")[0] == "cuda"
    ):
        raise _err(where, f"'device' must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}.")
    opt = _optimizer(raw, where)
    source = raw.get("source", "full")
    if source not in ("full", "representation", "jacobian", "sketch", "auto"):
        raise _err(
            where,
            f"'source' must be full, representation, jacobian, sketch or auto, got {source!r}.",
        )
    tables = {
        tbl: _table(raw, tbl, where)
        for tbl in ("data", "model", "baseline", "toy", "scheduler", "selection")
    }
    for k, v in tables["baseline"].items():
        if not _is_num(v):
            raise _err(where, f"[baseline] '{k}' must be a number, got {v!r} ({_tname(v)}).")
    val_fraction = _number(
        {"val_fraction": raw.get("val_fraction", 0.0)},
        "val_fraction",
        where,
        lo=0.0,
        hi=1.0,
        hi_open=True,
    )
    label_fractions, label_counts, label_seed = _label_fractions(raw, where)
    absent_primary = _absent_primary(raw, where, check_methods)
    toy = _toy_settings(tables["toy"], kind, where)
    raw_methods = raw.get("methods")
    if kind == "toy" and "methods" in tables["toy"]:  # the older place of a toy config's methods
        if raw_methods is not None and raw_methods != tables["toy"]["methods"]:
            raise _err(
                where,
                "methods are given twice, at the top level and in [toy]: keep the top-level "
                "'methods' and delete [toy] methods.",
            )
        raw_methods = tables["toy"]["methods"]
    entries = _method_entries(raw_methods, where)
    if check_methods:
        _check_methods(entries, where)
    runs: list[RunConfig] = []
    if kind == "train":
        from .registry import problem_keys, task_names

        try:
            tasks = task_names(raw["dataset"])
        except KeyError as e:
            raise _err(where, f"'dataset': {e.args[0]}") from e
        data_keys, model_keys = problem_keys(raw["dataset"])
        if data_keys is not None:
            _check_keys(tables["data"], data_keys, where, f"[data] (dataset {raw['dataset']!r})")
        if model_keys is not None:
            _check_keys(tables["model"], model_keys, where, f"[model] (dataset {raw['dataset']!r})")
        scheduler = parse_scheduler(tables["scheduler"], vals["epochs"], float(opt["lr"]), where)
        selection = parse_selection(tables["selection"], tasks, where)
        label_fractions, label_counts, label_seed = _normalized_fractions(
            label_fractions, label_counts, label_seed, tasks, raw["dataset"], where
        )
        if selection["criterion"] == "delta_m" and not single_task and not tables["baseline"]:
            raise _err(
                where,
                "[selection] criterion = 'delta_m' compares with single-task validation metrics: "
                "set single_task = true, or give a fixed [baseline] table.",
            )
        if selection["criterion"] == "delta_m" and not single_task:
            selection["baseline"] = {str(k): float(v) for k, v in tables["baseline"].items()}
        if scheduler.get("monitor") == "criterion" and selection["criterion"] == "last":
            raise _err(
                where,
                "[scheduler] monitor = 'criterion' needs a [selection] criterion other than "
                "'last'.",
            )
        common = dict(
            experiment=raw["name"],
            dataset=raw["dataset"],
            source=source,
            device=device,
            data=dict(tables["data"]),
            model=dict(tables["model"]),
            optimizer=opt,
            scheduler=scheduler,
            val_fraction=val_fraction,
            selection=selection,
            label_fractions=label_fractions,
            label_counts=label_counts,
            label_seed=label_seed,
            absent_primary=absent_primary,
            **vals,
        )
        for seed in seeds:
            for name, label, kw in entries:
                runs.append(
                    RunConfig(method=name, label=label, seed=seed, method_kwargs=kw, **common)
                )
        if single_task:
            for seed in seeds:
                template = RunConfig(method="single-task:0", label="", seed=seed, **common)
                runs.extend(single_task_config(template, i, t) for i, t in enumerate(tasks))
    baseline = {str(k): float(v) for k, v in tables["baseline"].items()}
    return ExperimentConfig(raw["name"], kind, runs, baseline, toy, None, entries)


def _label_fractions(
    raw: dict[str, Any], where: str
) -> tuple[dict[str, float], dict[str, int], int | None]:
    """The checked ``label_fractions`` table ({task: f} with 0 < f ≤ 1), ``label_counts`` table
    ({task: n} with n ≥ 1, no task in both) and ``label_seed`` (an int, or None: the run's seed).
    """
    tbl = _table(raw, "label_fractions", where)
    counts_tbl = _table(raw, "label_counts", where)
    counts: dict[str, int] = {}
    for task, n in counts_tbl.items():
        if not _is_int(n) or n < 1:
            raise _err(
                where,
                f"label_counts[{task!r}] must be an int ≥ 1, the number of the task's training "
                f"examples that keep their label, got {n!r} ({_tname(n)}).",
            )
        counts[task] = int(n)
    both = sorted(set(tbl) & set(counts))
    if both:
        raise _err(
            where,
            f"{both} are in both label_fractions and label_counts: give each task one of them.",
        )
    fractions: dict[str, float] = {}
    for task, f in tbl.items():
        if not _is_num(f) or not math.isfinite(f) or not 0.0 < f <= 1.0:
            raise _err(
                where,
                f"label_fractions[{task!r}] must be a number in (0, 1], the fraction of the "
                f"task's training examples that keep their label, got {f!r} ({_tname(f)}).",
            )
        fractions[task] = float(f)
    seed = raw.get("label_seed")
    if "label_seed" in raw and not _is_int(seed):
        raise _err(
            where,
            f"'label_seed' must be an int (leave it out to use each run's seed), got {seed!r} "
            f"({_tname(seed)}).",
        )
    if raw.get("kind", "train") == "toy" and (tbl or counts_tbl or "label_seed" in raw):
        raise _err(
            where, "label_fractions, label_counts and label_seed go with kind = 'train' configs."
        )
    return fractions, counts, seed


def _absent_primary(raw: dict[str, Any], where: str, check: bool) -> str:
    """The checked ``absent_primary``: ``"skip"`` or the name of a registered stateless method
    that takes no required argument and is not itself a primary/auxiliary method.
    """
    name = raw.get("absent_primary", "skip")
    if not isinstance(name, str) or not name:
        raise _err(
            where,
            f"'absent_primary' must be 'skip' or a method name (e.g. 'mean'), got {name!r} "
            f"({_tname(name)}).",
        )
    if name == "skip" or not check:
        return name
    from ..methods.registry import lookup

    _check_methods([(name, name, {})], f"{where}: 'absent_primary'")
    info = lookup(name.strip().lower().replace("_", "-").replace(" ", "-"))
    if info.family == "auxiliary" or info.stateful:
        why = (
            "a primary/auxiliary method, which needs the absent primary"
            if info.family == "auxiliary"
            else "stateful (it would see only the steps without the primary)"
        )
        raise _err(
            where,
            f"'absent_primary' = {name!r} is {why}: give 'skip' or a stateless method of the "
            "auxiliaries alone (e.g. 'mean').",
        )
    return info.name


def _normalized_fractions(
    fractions: dict[str, float],
    counts: dict[str, int],
    seed: int | None,
    tasks: list[str],
    dataset: str,
    where: str,
) -> tuple[dict[str, float], dict[str, int], int | None]:
    """The fractions below 1 (sorted by task; f = 1 is every label, as for a task not named), the
    counts (sorted by task) and the seed (None when neither removes a label: it changes nothing
    then); task names are checked.
    """
    for key, tbl in (("label_fractions", fractions), ("label_counts", counts)):
        unknown = [t for t in tbl if t not in tasks]
        if unknown:
            raise _err(
                where,
                f"{key} names {unknown}, which are not tasks of dataset {dataset!r}; its tasks "
                f"are {tasks}.",
            )
    kept = {t: f for t, f in sorted(fractions.items()) if f < 1.0}
    kept_counts = dict(sorted(counts.items()))
    return kept, kept_counts, (seed if kept or kept_counts else None)


def _toy_settings(tbl: dict[str, Any], kind: str, where: str) -> dict[str, Any]:
    """The [toy] table checked, with defaults (``TOY_DEFAULTS``); ``methods`` is left out."""
    if kind != "toy":
        if tbl:
            raise _err(where, "a [toy] table goes with kind = 'toy'.")
        return {}
    _check_keys(tbl, set(TOY_DEFAULTS) | {"methods"}, where, "[toy]")
    full = {**TOY_DEFAULTS, **{k: v for k, v in tbl.items() if k != "methods"}}
    w = f"{where}: [toy]"
    return {
        "steps": _int(full, "steps", w, 1),
        "lr": _number(full, "lr", w, lo=0.0, lo_open=True),
        "scale": _number(full, "scale", w, lo=0.0, lo_open=True),
        "record_every": _int(full, "record_every", w, 1),
    }


def _check_methods(entries: list[MethodEntry], where: str) -> None:
    """Every method name is registered and every method builds with its arguments (cheap, so bad
    arguments fail at load and not mid-benchmark).
    """
    import difflib

    from .. import methods as _methods
    from .methods import make_method

    names = list(_methods.available())
    for name, label, kw in entries:
        key = name.strip().lower().replace("_", "-").replace(" ", "-")
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise _err(where, f"unknown method {name!r}.{hint} `taskgrad methods` lists them.")
        try:
            make_method(name, kw)
        except (TypeError, ValueError) as e:
            raise _err(where, f"method {label!r}: {e}") from e


def _yaml_loader() -> Any:
    """A PyYAML SafeLoader that reads YAML 1.2 floats (``1e-3``, which YAML 1.1 reads as a string),
    refuses duplicate keys (which PyYAML otherwise silently overwrites) and resolves merge keys:
    ``<<: *a`` copies the keys of mapping a, ``<<: [*a, *b]`` those of a and b (a's win), and the
    mapping's own keys override merged ones (YAML's merge-key rule, as PyYAML's ``safe_load``).
    """
    try:
        import yaml
    except ImportError as e:
        raise ImportError(
            "YAML configs need PyYAML: `pip install pyyaml` (or write the config as TOML)."
        ) from e
    import re

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
        list("-+0123456789."),
    )
    error = yaml.constructor.ConstructorError
    merge_tag = "tag:yaml.org,2002:merge"

    def merged(loader: Any, value_node: Any, deep: bool) -> dict[Any, Any]:
        """The keys a merge key ``<<`` brings in: one mapping, or a list of them (earlier ones
        win).
        """
        sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        out: dict[Any, Any] = {}
        for src in sources:
            if not isinstance(src, yaml.MappingNode):
                raise error(
                    None,
                    None,
                    "a merge key `<<` takes a mapping (`<<: *anchor`) or a list of mappings "
                    f"(`<<: [*a, *b]`), got a {src.id}",
                    src.start_mark,
                )
            for k, v in loader.construct_object(src, deep=deep).items():
                out.setdefault(k, v)
        return out

    def mapping(loader: Any, node: Any, deep: bool = False) -> dict[Any, Any]:
        own: dict[Any, Any] = {}
        base: dict[Any, Any] | None = None
        for key_node, value_node in node.value:
            if key_node.tag == merge_tag:
                if base is not None:
                    raise error(
                        None,
                        None,
                        "two merge keys `<<` in one mapping: merge a list, `<<: [*a, *b]`",
                        key_node.start_mark,
                    )
                base = merged(loader, value_node, deep)
                continue
            key = loader.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)) and key is not None:  # e.g. `? [a, b]`
                raise error(
                    None,
                    None,
                    f"a key must be a scalar (a name), got a {type(key).__name__}",
                    key_node.start_mark,
                )
            if key in own:
                raise error(None, None, f"duplicate key {key!r}", key_node.start_mark)
            own[key] = loader.construct_object(value_node, deep=deep)
        return own if base is None else {**base, **own}

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a ``.toml``, ``.yaml`` or ``.yml`` file (no validation)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            return tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML: {e}") from e
    if suffix in (".yaml", ".yml"):
        loader = _yaml_loader()
        import yaml

        try:
            raw = yaml.load(path.read_text(), Loader=loader)  # noqa: S506 (a SafeLoader subclass)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from e
        if not isinstance(raw, dict):
            raise ValueError(
                f"{path}: a config is a mapping of keys at the top level, got {_tname(raw)}."
            )
        return raw
    raise ValueError(
        f"{path}: configs are TOML (*.toml) or YAML (*.yaml, *.yml) files, got {path.suffix!r}."
    )


def _override_value(text: str) -> Any:
    """A TOML value (``3``, ``1e-3``, ``true``, ``[1, 2]``, ``"x"``), or the text itself as a
    string.
    """
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(
    raw: dict[str, Any], overrides: list[str], where: str = "config"
) -> dict[str, Any]:
    """A copy of the config mapping ``raw`` with each ``KEY=VALUE`` of ``overrides`` set: ``KEY`` is
    a
    top-level key or ``table.key`` (e.g. ``epochs=1``, ``data.n_train=512``, ``toy.steps=20``),
    ``VALUE``
    a TOML value (a bare word is a string). The result is checked like any config.
    """
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise _err(
                where, f"override {item!r} must be KEY=VALUE (e.g. epochs=1 or data.n_train=512)."
            )
        table, dot, sub = key.partition(".")
        if dot:
            current = out.get(table)
            if current is None:
                current = {}
            if not isinstance(current, dict):
                raise _err(where, f"override {item!r}: {table!r} is not a table.")
            out[table] = {**current, sub: _override_value(text.strip())}
        else:
            out[key] = _override_value(text.strip())
    return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read and validate one TOML or YAML config file (see the module docstring for the keys),
    with the ``KEY=VALUE`` ``overrides`` applied first (see :func:`apply_overrides`).
    """
    raw = read_config_file(path)
    if overrides:
        raw = apply_overrides(raw, overrides, where=str(path))
    cfg = parse_config(raw, where=str(path))
    return replace(cfg, path=str(path))
