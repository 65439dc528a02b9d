"""Load trpo-lab runs (local run/sweep directories or W&B) into tidy long-form tables.

Two tables come out of a set of runs:

* the *run index* (:func:`load_run_index`): one row per run, with the run's configuration
  columns (:data:`RUN_COLUMNS`), its status and the figures of its ``summary.json``;
* the *long table* (:func:`load_runs`): one row per (run, update), i.e. every row of every
  ``metrics.csv``, with the run's configuration columns repeated on each row.

Failed, interrupted and incomplete runs (killed hard: no ``summary.json``) are kept and flagged
in the ``status`` column, never dropped. A run whose ``metrics.csv`` is empty (or missing) yields
no rows in the long table but still appears in the index.

A ``metrics.csv`` whose last line has no newline was cut off mid-write (the run was killed); that
partial last row is dropped and the index says so in ``metrics_truncated``.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trpo_lab.config import MINATAR_GAMES, env_label
from trpo_lab.jobs import sweep_group
from trpo_lab.registry import algo_order, load_plugins, metric_columns

load_plugins()  # TRPO_LAB_ALGORITHMS: their columns and labels too
#: Metric columns of ``metrics.csv`` in their order: trpo-lab's own list
#: (:func:`trpo_lab.registry.metric_columns`). Other columns a file holds are kept after these.
METRIC_COLUMNS: tuple[str, ...] = tuple(metric_columns(supplementary=False))

#: Per-run columns (identity, status and configuration), first in both tables.
RUN_COLUMNS: tuple[str, ...] = (
    "run_dir",
    "sweep_dir",
    "job_num",
    "job_id",
    "override_dirname",
    "status",
    "error",
    "algo",
    "env",
    "env_id",
    "tabular",
    "policy",
    "estimator",
    "seed",
    "gamma",
    "gae_lambda",
    "delta",
    "beta",
    "beta_label",
    "lr",
    "clip",
    "line_search",
    "sampler",
    "setting",
    "setting_value",
    "group",
    "project",
    "total_steps",
    "batch_steps",
    "num_envs",
    "normalize_advantages",
)

#: Extra columns of the run index (one row per run), after :data:`RUN_COLUMNS`.
INDEX_COLUMNS: tuple[str, ...] = (
    "has_summary",
    "n_updates",
    "metrics_truncated",
    "iterations",
    "final_env_steps",
    "final_return_mean",
    "final_eval_return",
    "wall_s",
    "wandb_run_id",
)

#: Algorithm labels in their canonical order (``npg`` = TRPO without line search).
ALGO_ORDER: tuple[str, ...] = algo_order()

#: Statuses a run can have. ``incomplete``: no (readable) ``summary.json``, e.g. killed hard.
STATUSES: tuple[str, ...] = ("completed", "failed", "interrupted", "incomplete")

_DTYPES: dict[str, str] = {
    "job_num": "Int64",
    "seed": "Int64",
    "tabular": "boolean",
    "line_search": "boolean",
    "normalize_advantages": "boolean",
    "total_steps": "Int64",
    "batch_steps": "Int64",
    "num_envs": "Int64",
    "has_summary": "bool",
    "n_updates": "int64",
    "metrics_truncated": "bool",
    "iterations": "Int64",
    "final_env_steps": "Int64",
}
_FLOAT_COLUMNS = (
    "gamma",
    "gae_lambda",
    "delta",
    "beta",
    "lr",
    "clip",
    "setting_value",
    "final_return_mean",
    "final_eval_return",
    "wall_s",
)
_MISSING = ("???", "", None)


# --------------------------------------------------------------------------------------------
# small pure helpers
# --------------------------------------------------------------------------------------------


def get_key(cfg: Mapping[str, Any] | None, dotted: str, default: Any = None) -> Any:
    """Return ``cfg[a][b]...`` for ``dotted = "a.b..."``, or ``default`` if any part is missing."""
    cur: Any = cfg
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return default
        cur = cur[part]
    return default if cur in _MISSING else cur


def to_float(value: Any) -> float:
    """A config value as a float; NaN for missing, booleans and non-numeric strings."""
    if value is None or isinstance(value, bool):
        return math.nan
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return math.nan
    return math.nan


def to_int(value: Any) -> int | None:
    """A config value as an int, or None when missing / not integral."""
    f = to_float(value)
    if math.isnan(f) or f != int(f):
        return None
    return int(f)


def to_bool(value: Any) -> bool | None:
    """A config value as a bool (accepts ``true``/``false`` strings), or None."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    return None


def algo_label(name: str | None, line_search: bool | None,
               sampler: str | None = None) -> str | None:
    """Algorithm label: ``trpo`` with ``line_search=false`` is the natural gradient, ``npg``;
    with ``algo.sampler=vine`` the label gets `` vine`` (``trpo vine``), so that figures and
    tables tell the two samplers apart."""
    if name is None:
        return None
    name = str(name)
    if name == "trpo" and line_search is False:
        name = "npg"
    return f"{name} vine" if sampler == "vine" else name


def beta_columns(beta: Any) -> tuple[float, str | None]:
    """``(beta, beta_label)``: the numeric beta (NaN for ``"theory"``) and its text label."""
    if beta is None or beta in _MISSING:
        return math.nan, None
    if isinstance(beta, str) and math.isnan(to_float(beta)):
        return math.nan, beta
    value = to_float(beta)
    return value, (None if math.isnan(value) else f"{value:g}")


def setting_of(
    algo: str | None, delta: float, beta_label: str | None, lr: float, clip: float
) -> tuple[str | None, float]:
    """The algorithm's step-size setting as ``(label, value)``.

    trpo/npg (and their vine labels): ``delta=...``; kl_penalty: ``beta=...``; vpg:
    ``lr=...``; ppo: ``clip=...``.
    """
    algo = None if algo is None else algo.removesuffix(" vine")
    if algo in ("trpo", "npg") and not math.isnan(delta):
        return f"delta={delta:g}", delta
    if algo == "kl_penalty" and beta_label is not None:
        return f"beta={beta_label}", to_float(beta_label)
    if algo == "vpg" and not math.isnan(lr):
        return f"lr={lr:g}", lr
    if algo == "ppo" and not math.isnan(clip):
        return f"clip={clip:g}", clip
    return None, math.nan


def config_columns(
    cfg: Mapping[str, Any], hydra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The configuration columns of :data:`RUN_COLUMNS` from a run's composed config.

    ``hydra`` is the content of ``.hydra/hydra.yaml`` (optional): it provides the job number, id
    and override string, and the config-group choices used when a config lacks ``*.name``.
    Keys that do not apply to the run's algorithm are NaN / None.
    """
    h = get_key(hydra, "hydra", {}) if hydra else {}
    choices = get_key(h, "runtime.choices", {}) or {}
    algo_name = get_key(cfg, "algo.name", choices.get("algo"))
    line_search = to_bool(get_key(cfg, "algo.line_search"))
    algo = algo_label(algo_name, line_search, get_key(cfg, "algo.sampler"))
    delta = to_float(get_key(cfg, "algo.delta"))
    beta, beta_label = beta_columns(get_key(cfg, "algo.beta"))
    lr = to_float(get_key(cfg, "algo.lr"))
    clip = to_float(get_key(cfg, "algo.clip"))
    setting, setting_value = setting_of(algo, delta, beta_label, lr, clip)
    job_id = get_key(h, "job.id")
    env_name = get_key(cfg, "env.name", choices.get("env"))
    env_id = get_key(cfg, "env.id")
    if env_name == "minatar" and get_key(cfg, "env.game") in MINATAR_GAMES:
        env_id = MINATAR_GAMES[get_key(cfg, "env.game")]  # the run's id: set from env.game
    return {
        "job_num": to_int(get_key(h, "job.num")),
        "job_id": None if job_id is None else str(job_id),
        "override_dirname": get_key(h, "job.override_dirname"),
        "algo": algo,
        "env": env_label(env_name, env_id),
        "env_id": env_id,
        "tabular": to_bool(get_key(cfg, "env.tabular")),
        "policy": get_key(cfg, "policy.name", choices.get("policy")),
        "estimator": get_key(cfg, "algo.estimator"),
        "seed": to_int(get_key(cfg, "seed")),
        "gamma": to_float(get_key(cfg, "gamma")),
        "gae_lambda": to_float(get_key(cfg, "gae_lambda")),
        "delta": delta,
        "beta": beta,
        "beta_label": beta_label,
        "lr": lr,
        "clip": clip,
        "line_search": line_search,
        "sampler": get_key(cfg, "algo.sampler"),
        "setting": setting,
        "setting_value": setting_value,
        "group": get_key(cfg, "logger.group"),
        "project": get_key(cfg, "logger.project"),
        "total_steps": to_int(get_key(cfg, "total_steps")),
        "batch_steps": to_int(get_key(cfg, "batch_steps")),
        "num_envs": to_int(get_key(cfg, "num_envs")),
        "normalize_advantages": to_bool(get_key(cfg, "normalize_advantages")),
    }


def summary_columns(summary: Mapping[str, Any] | None, error: str | None = None) -> dict[str, Any]:
    """Status and final figures from a parsed ``summary.json`` (None: the run is incomplete)."""
    if summary is None:
        return {
            "status": "incomplete",
            "error": error,
            "has_summary": False,
            "iterations": None,
            "final_env_steps": None,
            "final_return_mean": math.nan,
            "final_eval_return": math.nan,
            "wall_s": math.nan,
            "wandb_run_id": None,
        }
    status = summary.get("status")
    if status not in STATUSES:
        status = "incomplete"
    return {
        "status": status,
        "error": summary.get("error"),
        "has_summary": True,
        "iterations": to_int(summary.get("iterations")),
        "final_env_steps": to_int(summary.get("env_steps")),
        "final_return_mean": to_float(summary.get("final_return_mean")),
        "final_eval_return": to_float(summary.get("final_eval_return")),
        "wall_s": to_float(summary.get("wall_s")),
        "wandb_run_id": summary.get("wandb_run_id"),
    }


def _to_numeric(col: pd.Series) -> pd.Series:
    """A metrics column as float; ``True``/``False`` text becomes 1/0, junk becomes NaN."""
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return col.astype(float)
    text = col.astype(str).str.strip().str.lower()
    as_bool = text.map({"true": 1.0, "false": 0.0})
    return as_bool.fillna(pd.to_numeric(col.astype(str), errors="coerce")).astype(float)


def _complete_lines(text: str) -> tuple[str, bool]:
    """The text up to its last newline, and whether a cut last line was dropped."""
    if text.endswith("\n"):
        return text, False
    cut = text.rfind("\n")
    return (text[: cut + 1] if cut >= 0 else ""), bool(text.strip())


def parse_metrics_csv(text: str, text_columns: Iterable[str] = ()) -> tuple[pd.DataFrame, bool]:
    """Parse the text of a ``metrics.csv`` (or a ``probes.csv``); returns ``(table, truncated)``.

    Every column but ``text_columns`` becomes float (empty cell: NaN). A last line without a
    newline was cut off by a hard kill and is dropped (``truncated`` is then True); so are
    malformed lines and repeated header lines. Empty text gives an empty table.
    """
    text, truncated = _complete_lines(text)
    if not text.strip():
        return pd.DataFrame(), truncated
    table = pd.read_csv(io.StringIO(text), on_bad_lines="skip", dtype=str, keep_default_na=False)
    table = table.replace("", np.nan)
    keep = set(text_columns)
    table = table.apply(lambda col: col if col.name in keep else _to_numeric(col))
    if "iteration" in table.columns:
        table = table[table["iteration"].notna()].reset_index(drop=True)
    return table, truncated


def read_metrics(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, bool]:
    """Read a ``metrics.csv`` (missing file: empty table). See :func:`parse_metrics_csv`."""
    p = Path(path)
    if not p.is_file():
        return pd.DataFrame(), False
    return parse_metrics_csv(p.read_text(encoding="utf-8", errors="replace"))


#: Text columns of ``probes.csv``; every other column is numeric.
PROBE_TEXT_COLUMNS = ("probe", "direction")


def read_probes(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A run's ``probes.csv`` (missing: empty table): numeric columns as float, ``probe`` and
    ``direction`` as text; a cut last line (a killed run) is dropped."""
    p = Path(path)
    if not p.is_file():
        return pd.DataFrame()
    text = p.read_text(encoding="utf-8", errors="replace")
    return parse_metrics_csv(text, PROBE_TEXT_COLUMNS)[0]


def load_probes(index: pd.DataFrame) -> pd.DataFrame:
    """The probes of every run of ``index`` (:func:`load_run_index`) as one long table: each
    row of each run's ``probes.csv`` with the run's :data:`RUN_COLUMNS` prepended (a run
    column that probes.csv also has, ``batch_steps``, as ``run_batch_steps``). Runs without
    probes add no rows; no run has any: an empty table."""
    frames = [read_probes(Path(run) / "probes.csv").assign(run_dir=run)
              for run in index["run_dir"]]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=list(RUN_COLUMNS))
    long = pd.concat(frames, ignore_index=True)
    runs = index[list(RUN_COLUMNS)].rename(columns={  # the run's batch_steps: run_batch_steps
        c: f"run_{c}" for c in RUN_COLUMNS if c != "run_dir" and c in long.columns})
    long = long.merge(runs, on="run_dir", how="left", validate="many_to_one")
    return long[list(runs.columns) + [c for c in long.columns if c not in runs.columns]]


# --------------------------------------------------------------------------------------------
# finding and reading run directories
# --------------------------------------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    """A run directory holds ``.hydra/config.yaml`` and/or ``metrics.csv``."""
    return (path / ".hydra" / "config.yaml").is_file() or (path / "metrics.csv").is_file()


def _natural_key(path: Path) -> tuple[tuple[int, int | str], ...]:
    return tuple(
        (0, int(tok)) if tok.isdigit() else (1, tok)
        for part in path.parts
        for tok in re.split(r"(\d+)", part)
        if tok
    )


def find_run_dirs(*paths: str | os.PathLike[str]) -> list[Path]:
    """All run directories under ``paths`` (each a run or any folder above runs), sorted.

    Hidden folders and ``wandb/`` folders are not searched, nor are folders inside a run.
    """
    found: dict[Path, None] = {}
    for raw in paths:
        root = Path(raw).resolve()
        if not root.exists():
            raise FileNotFoundError(f"no such run or sweep directory: {raw}")
        if is_run_dir(root):
            found[root] = None
            continue
        for dirpath, dirnames, _ in os.walk(root):
            here = Path(dirpath)
            if here != root and is_run_dir(here):
                found[here] = None
                dirnames[:] = []
                continue
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "wandb"]
    return sorted(found, key=_natural_key)


def find_sweep_dir(run_dir: Path) -> Path | None:
    """The nearest folder above ``run_dir`` holding Hydra's ``multirun.yaml``, if any."""
    for parent in run_dir.parents:
        if (parent / "multirun.yaml").is_file():
            return parent
    return None


def _read_yaml(path: Path, resolve: bool) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as fh:
        data = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if not isinstance(data, dict):
        return None
    if resolve and "${" in json.dumps(data, default=str):
        try:
            resolved = OmegaConf.to_container(OmegaConf.create(data), resolve=True)
        except OmegaConfBaseException:
            return data
        return resolved if isinstance(resolved, dict) else data
    return data


def _read_summary(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"unreadable summary.json: {exc}"
    if not isinstance(data, dict):
        return None, "unreadable summary.json: not an object"
    return data, None


def read_run(run_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], pd.DataFrame]:
    """One run directory as ``(index_row, metrics)``; ``index_row`` has all index columns."""
    path = Path(run_dir).resolve()
    cfg = _read_yaml(path / ".hydra" / "config.yaml", resolve=True) or {}
    hydra = _read_yaml(path / ".hydra" / "hydra.yaml", resolve=False)
    summary, summary_error = _read_summary(path / "summary.json")
    metrics, truncated = read_metrics(path / "metrics.csv")
    sweep = find_sweep_dir(path)
    row: dict[str, Any] = {"run_dir": str(path), "sweep_dir": None if sweep is None else str(sweep)}
    row |= config_columns(cfg, hydra)
    if row["group"] is None and summary is not None:
        row["group"] = summary.get("group")
    if row["group"] is None and sweep is not None:
        row["group"] = sweep_group(sweep, get_key(hydra, "hydra.job.config_name"))
    row |= summary_columns(summary, summary_error)
    row |= {"n_updates": len(metrics), "metrics_truncated": truncated}
    return row, metrics


# --------------------------------------------------------------------------------------------
# assembling the tables
# --------------------------------------------------------------------------------------------


def _typed_index(rows: list[dict[str, Any]]) -> pd.DataFrame:
    columns = list(RUN_COLUMNS + INDEX_COLUMNS)
    index = pd.DataFrame(rows, columns=columns)
    for col, dtype in _DTYPES.items():
        index[col] = index[col].astype(dtype)
    for col in _FLOAT_COLUMNS:
        index[col] = index[col].astype(float)
    return index


def _metric_order(frames: Iterable[pd.DataFrame]) -> list[str]:
    order = list(METRIC_COLUMNS)
    for frame in frames:
        order += [c for c in frame.columns if c not in order]
    return order


def assemble(index: pd.DataFrame, metrics: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The long table: every run's metrics rows with its :data:`RUN_COLUMNS` prepended.

    ``metrics`` maps ``run_dir`` to that run's metrics table. All :data:`METRIC_COLUMNS`
    are present (NaN where a run did not log them); extra metric columns follow them.
    """
    metric_cols = _metric_order(metrics.values())
    frames = [m.assign(run_dir=run) for run, m in metrics.items() if len(m)]
    runs_part = index[list(RUN_COLUMNS)]
    if not frames:
        empty = pd.DataFrame({c: pd.Series(dtype=float) for c in metric_cols})
        return pd.concat([runs_part.iloc[:0].reset_index(drop=True), empty], axis=1)
    long = pd.concat(frames, ignore_index=True)
    for col in metric_cols:
        if col not in long.columns:
            long[col] = np.nan
    long = long.merge(runs_part, on="run_dir", how="left", validate="many_to_one")
    return long[list(RUN_COLUMNS) + metric_cols]


def load_all(*paths: str | os.PathLike[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(index, long)`` for the runs under ``paths``: :func:`load_run_index`, :func:`load_runs`."""
    rows: list[dict[str, Any]] = []
    metrics: dict[str, pd.DataFrame] = {}
    for run_dir in find_run_dirs(*paths):
        row, table = read_run(run_dir)
        rows.append(row)
        metrics[row["run_dir"]] = table
    index = _typed_index(rows)
    return index, assemble(index, metrics)


def load_run_index(*paths: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per run found under ``paths``: :data:`RUN_COLUMNS` + :data:`INDEX_COLUMNS`.

    Every run is listed, including failed, interrupted and incomplete ones and runs with an
    empty ``metrics.csv`` (``n_updates == 0``).
    """
    return load_all(*paths)[0]


def load_runs(*paths: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per (run, update) for every run under ``paths`` (runs or sweep directories).

    Columns: :data:`RUN_COLUMNS` (``run_dir``, ``sweep_dir``, ``algo`` label, ``env``,
    ``policy``, ``seed``, ``delta``, ``gamma``, ``gae_lambda``, ``beta``/``beta_label``,
    ``estimator``, ``job_id``/``job_num``, ``status``, ``group``, ...) then all metric columns.
    """
    return load_all(*paths)[1]


# --------------------------------------------------------------------------------------------
# Weights & Biases
# --------------------------------------------------------------------------------------------

#: W&B run states mapped onto the local statuses.
WANDB_STATES: dict[str, str] = {
    "finished": "completed",
    "failed": "failed",
    "killed": "interrupted",
    "crashed": "incomplete",
    "running": "incomplete",
    "pending": "incomplete",
    "preempted": "interrupted",
    "preempting": "interrupted",
}


def unflatten_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A W&B run config as a nested dict.

    Accepts nested dicts, flattened keys (``"algo.delta"`` or ``"algo/delta"``) and the raw
    ``{"key": {"value": ..., "desc": ...}}`` form; drops W&B's own ``_``-prefixed keys.
    """
    out: dict[str, Any] = {}
    for key, value in config.items():
        if str(key).startswith("_"):
            continue
        if isinstance(value, Mapping) and set(value) <= {"value", "desc"} and "value" in value:
            value = value["value"]
        if isinstance(value, Mapping):
            value = unflatten_config(value)
        parts = re.split(r"[./]", str(key))
        cur = out
        for part in parts[:-1]:
            nxt = cur.setdefault(part, {})
            if not isinstance(nxt, dict):
                nxt = cur[part] = {}
            cur = nxt
        leaf = parts[-1]
        if isinstance(value, dict) and isinstance(cur.get(leaf), dict):
            cur[leaf] |= value
        else:
            cur[leaf] = value
    return out


def history_to_metrics(history: pd.DataFrame) -> pd.DataFrame:
    """A W&B history table as a metrics table: numeric columns, sorted by ``iteration``.

    W&B's ``_step``/``_runtime``/``_timestamp`` are dropped (``_step`` becomes ``iteration``
    when the run did not log one); non-numeric columns (media) are dropped.
    """
    if history is None or history.empty:
        return pd.DataFrame()
    hist = history.copy()
    if "iteration" not in hist.columns and "_step" in hist.columns:
        hist["iteration"] = hist["_step"]
    keep = [c for c in hist.columns if not str(c).startswith("_")]
    out = pd.DataFrame(index=hist.index)
    for col in keep:
        values = hist[col]
        if values.map(lambda v: isinstance(v, Mapping | list)).any():
            continue
        numeric = _to_numeric(values)
        if col in METRIC_COLUMNS or numeric.notna().any():
            out[col] = numeric
    if "iteration" in out.columns:
        out = out[out["iteration"].notna()].sort_values("iteration", kind="stable")
    return out.reset_index(drop=True)


def wandb_run_to_tables(
    config: Mapping[str, Any],
    history: pd.DataFrame,
    state: str,
    *,
    run_id: str,
    run_path: str | None = None,
    group: str | None = None,
    summary: Mapping[str, Any] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pure conversion of one W&B run into ``(index_row_table, long_table)``.

    ``config`` is ``run.config``, ``history`` the run's full history (``scan_history`` rows),
    ``state`` the W&B state (``finished``, ``failed``, ``crashed``, ...). A ``status`` in the
    run summary (if the app logged one) takes precedence over the state. ``run_dir`` is
    ``wandb:<run_path or run_id>``; ``sweep_dir`` is None.
    """
    cfg = unflatten_config(config)
    metrics = history_to_metrics(history)
    row: dict[str, Any] = {"run_dir": f"wandb:{run_path or run_id}", "sweep_dir": None}
    row |= config_columns(cfg)
    if row["group"] is None:
        row["group"] = group
    status = WANDB_STATES.get(str(state).lower(), "incomplete")
    summ = dict(summary or {})
    if summ.get("status") in STATUSES:
        status = summ["status"]
    last = metrics.iloc[-1] if len(metrics) else pd.Series(dtype=float)
    row |= {
        "status": status,
        "error": summ.get("error"),
        "has_summary": summary is not None,
        "iterations": to_int(last.get("iteration")),
        "final_env_steps": to_int(last.get("env_steps")),
        "final_return_mean": to_float(last.get("rollout/return_mean")),
        "wall_s": to_float(last.get("time/wall_s")),
        "wandb_run_id": run_id,
        "n_updates": len(metrics),
        "metrics_truncated": False,
    }
    index = _typed_index([row])
    return index, assemble(index, {row["run_dir"]: metrics})


def load_wandb(entity_project: str, group: str | None = None, *, api: Any = None) -> pd.DataFrame:
    """The long table (same columns as :func:`load_runs`) for the W&B runs of a project.

    ``entity_project`` is ``"entity/project"``; ``group`` restricts to one run group (a
    sweep). ``api`` defaults to ``wandb.Api()`` (needs network and an API key). The per-run
    conversion is :func:`wandb_run_to_tables`.
    """
    if api is None:
        import wandb  # slow to import: only here

        api = wandb.Api()
    filters = {"group": group} if group else None
    indexes, longs = [], []
    for run in api.runs(entity_project, filters=filters):
        history = pd.DataFrame(list(run.scan_history()))
        index, long = wandb_run_to_tables(
            dict(run.config),
            history,
            run.state,
            run_id=run.id,
            run_path="/".join(run.path),
            group=run.group,
            summary=dict(run.summary),
        )
        indexes.append(index)
        longs.append(long)
    if not longs:
        return assemble(_typed_index([]), {})
    frames = [f for f in longs if len(f)] or longs[:1]
    return pd.concat(frames, ignore_index=True)
