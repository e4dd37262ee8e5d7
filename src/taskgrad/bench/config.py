"""Benchmark configs: one TOML file describes an experiment, expanded into runs (method × seed).

A file holds (all keys but ``name`` and ``dataset`` optional)::

    name = "multimnist"            # experiment name: results go to OUT/<name>/<label>/seed<s>/
    dataset = "multimnist"         # a problem of taskgrad.bench.problems (see `problems()`)
    methods = ["mean", "mgda", {name = "cagrad", c = 0.4}, {name = "primary-aux", label = "pa"}]
    seeds = [0, 1, 2]
    epochs = 10
    batch_size = 256
    single_task = true             # also train one single-task baseline per task (for Δm)
    source = "full"                # Gram source: full | representation | jacobian | sketch
    device = "auto"                # auto | cpu | cuda
    max_steps_per_epoch = 0        # 0: the whole training set each epoch
    checkpoint_every = 200         # steps between checkpoints (and at every epoch end)
    [data]                         # keyword arguments of the problem
    [model]                        # keyword arguments of the problem's model
    [optimizer]                    # name = "adam" | "sgd" | "adamw", lr, weight_decay, momentum
    [baseline]                     # optional fixed single-task metrics {"task/metric" = value}
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ExperimentConfig", "RunConfig", "load_config", "parse_config"]

_TOP_KEYS = {
    "name", "dataset", "kind", "methods", "seeds", "epochs", "batch_size", "single_task", "source",
    "device", "max_steps_per_epoch", "checkpoint_every", "data", "model", "optimizer", "baseline",
    "description", "eval_batch_size", "toy",
}
_OPT_KEYS = {"name", "lr", "weight_decay", "momentum"}


@dataclass(frozen=True)
class RunConfig:
    """One training run: a problem, a model, a method, an optimizer, epochs and a seed.

    ``method`` is a registry name of :mod:`taskgrad.methods`, or ``"single-task:<i>"`` for the
    single-task baseline of task i. ``label`` names the run in tables and folders.
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

    @property
    def run_id(self) -> str:
        """Relative folder of the run: ``<experiment>/<label>/seed<seed>``."""
        return f"{self.experiment}/{self.label}/seed{self.seed}"

    @property
    def is_single_task(self) -> bool:
        return self.method.startswith("single-task:")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes the result except ``device`` (a resumed run must match)."""
        d = self.to_dict()
        d.pop("device")
        return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ExperimentConfig:
    """A parsed config file: its runs, the toy settings (``kind = "toy"``) and a fixed baseline."""

    name: str
    kind: str
    runs: list[RunConfig]
    baseline: dict[str, float]
    toy: dict[str, Any]
    path: str | None = None


def _err(where: str, msg: str) -> ValueError:
    return ValueError(f"{where}: {msg}")


def _method_entries(raw: Any, where: str) -> list[tuple[str, str, dict[str, Any]]]:
    if not isinstance(raw, list) or not raw:
        raise _err(where, "'methods' must be a non-empty list of names or {name = ..., ...} tables.")
    out = []
    for m in raw:
        if isinstance(m, str):
            out.append((m, m, {}))
        elif isinstance(m, dict) and isinstance(m.get("name"), str):
            kw = {k: v for k, v in m.items() if k not in ("name", "label")}
            label = m.get("label") or (m["name"] if not kw else m["name"] + "-" + "-".join(f"{k}{v}" for k, v in sorted(kw.items())))
            out.append((m["name"], str(label), kw))
        else:
            raise _err(where, f"method entry {m!r} must be a name or a table with a 'name' key.")
    labels = [lbl for _, lbl, _ in out]
    if len(set(labels)) != len(labels):
        raise _err(where, f"two methods share a label in {labels}; give them distinct 'label's.")
    return out


def parse_config(raw: dict[str, Any], where: str = "config", check_methods: bool = True) -> ExperimentConfig:
    """Validate a config mapping (as read from TOML) and expand it into runs."""
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise _err(where, f"unknown keys {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}.")
    for key in ("name", "dataset"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise _err(where, f"'{key}' must be a non-empty string.")
    kind = raw.get("kind", "train")
    if kind not in ("train", "toy"):
        raise _err(where, f"'kind' must be 'train' or 'toy', got {kind!r}.")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise _err(where, f"'seeds' must be a non-empty list of ints, got {seeds!r}.")
    ints = {"epochs": 1, "batch_size": 256, "max_steps_per_epoch": 0, "checkpoint_every": 200, "eval_batch_size": 1024}
    vals: dict[str, int] = {}
    for key, default in ints.items():
        v = raw.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if key == "max_steps_per_epoch" else 1):
            raise _err(where, f"'{key}' must be a positive int, got {v!r}.")
        vals[key] = v
    opt = {"name": "adam", "lr": 1e-3, **raw.get("optimizer", {})}
    if set(opt) - _OPT_KEYS:
        raise _err(where, f"[optimizer] has unknown keys {sorted(set(opt) - _OPT_KEYS)}; allowed: {sorted(_OPT_KEYS)}.")
    if opt["name"] not in ("adam", "adamw", "sgd"):
        raise _err(where, f"optimizer name must be 'adam', 'adamw' or 'sgd', got {opt['name']!r}.")
    if not isinstance(opt["lr"], (int, float)) or opt["lr"] <= 0:
        raise _err(where, f"optimizer lr must be a positive number, got {opt['lr']!r}.")
    source = raw.get("source", "full")
    if source not in ("full", "representation", "jacobian", "sketch", "auto"):
        raise _err(where, f"'source' must be full, representation, jacobian, sketch or auto, got {source!r}.")
    for tbl in ("data", "model", "baseline", "toy"):
        if not isinstance(raw.get(tbl, {}), dict):
            raise _err(where, f"[{tbl}] must be a table.")
    entries = _method_entries(raw.get("methods"), where)
    if check_methods:
        from .. import methods as _methods

        names = set(_methods.available())
        for name, _, _ in entries:
            key = name.strip().lower().replace("_", "-")
            if key not in names:
                raise _err(where, f"unknown method {name!r}; `taskgrad methods` lists them.")
    runs: list[RunConfig] = []
    if kind == "train":
        common = dict(
            experiment=raw["name"], dataset=raw["dataset"], source=source, device=raw.get("device", "auto"),
            data=dict(raw.get("data", {})), model=dict(raw.get("model", {})), optimizer=opt, **vals,
        )
        for seed in seeds:
            for name, label, kw in entries:
                runs.append(RunConfig(method=name, label=label, seed=seed, method_kwargs=kw, **common))
        if raw.get("single_task", False):
            from .problems import task_names

            for seed in seeds:
                for i, t in enumerate(task_names(raw["dataset"], raw.get("data", {}))):
                    runs.append(RunConfig(method=f"single-task:{i}", label=f"single-task:{t}", seed=seed, **common))
    baseline = {str(k): float(v) for k, v in raw.get("baseline", {}).items()}
    return ExperimentConfig(raw["name"], kind, runs, baseline, dict(raw.get("toy", {})), None)


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate one TOML config file (see the module docstring for the keys)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist.")
    if path.suffix.lower() != ".toml":
        raise ValueError(f"{path}: configs are TOML files (*.toml), got {path.suffix!r}.")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from e
    cfg = parse_config(raw, where=str(path))
    return ExperimentConfig(cfg.name, cfg.kind, cfg.runs, cfg.baseline, cfg.toy, str(path))
