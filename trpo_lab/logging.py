"""One logger for every algorithm: a crash-safe ``metrics.csv`` and the same keys to W&B."""

from __future__ import annotations

import csv
import hashlib
import io
import logging as pylogging
import math
import os
import shutil
import socket
import sys
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from trpo_lab.registry import metric_columns
from trpo_lab.rundir import RunFileError, start_over_advice

#: metrics.csv's columns as registered at import (the core's and the built-in algorithms'):
#: :func:`trpo_lab.registry.metric_columns`, which also holds plug-ins registered later.
COLUMNS = metric_columns()


#: Columns of the ``improvement_pairs`` W&B table (one row per evaluated update); the
#: surrogate's error is the held-out prediction minus the truth.
IMPROVEMENT_PAIRS_COLUMNS = [
    "iteration", "env_steps", "predicted_improvement", "predicted_improvement_heldout",
    "predicted_improvement_heldout_se", "true_improvement", "true_improvement_se",
    "surrogate_error", "kl_max",
]


# columns that measure the machine, not the run: they differ between identical runs
TIME_COLUMNS = ["time/wall_s", "time/sps", "time/eval_s", "time/probe_s"]


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class MetricsPosition:
    """What metrics.csv held when a checkpoint was written: its rows, size and SHA-256."""

    rows: int
    size: int
    sha256: str


class MetricsCSV:
    """One row per update, flushed at once, so a killed run leaves a readable file.

    Resuming from the checkpoint of update k keeps rows with iteration < k and drops rows that
    a crashed run wrote after its last checkpoint (they are recomputed identically), so the file
    never holds a duplicated or a missing iteration. The checkpoint records the file's size and
    hash (:meth:`position`); a file whose first bytes no longer match is refused
    (:class:`~trpo_lab.rundir.RunFileError`) before anything is written.

    probes.csv is written by the same class (``columns`` = :data:`trpo_lab.probes.COLUMNS`,
    several rows per probed update): it is always resumed by its checkpointed position.
    """

    def __init__(self, path: Path, resume_rows: int | None = None,
                 expected: MetricsPosition | None = None, columns: list[str] | None = None):
        self.path = path
        self.columns = metric_columns() if columns is None else columns
        self.hash = hashlib.sha256()
        self.size = 0
        self.rows = 0
        if resume_rows is not None:
            check_present(path, expected.rows if expected is not None else resume_rows)
        if resume_rows is not None and path.exists():
            self._reopen(resume_rows, expected)
        else:
            self.file = path.open("w", newline="")
            self._append(",".join(self.columns) + "\n")

    def _reopen(self, rows: int, expected: MetricsPosition | None) -> None:
        data = self.path.read_bytes()
        kept = checkpointed_rows(self.path, data, rows, expected)
        header = kept.split(b"\n", 1)[0].decode()
        if header != ",".join(self.columns):  # an older schema: rewrite in today's columns
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, self.columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(csv.DictReader(io.StringIO(kept.decode())))
            kept = buffer.getvalue().encode()
            tmp = self.path.with_suffix(".csv.tmp")
            tmp.write_bytes(kept)
            os.replace(tmp, self.path)
        elif len(kept) != len(data):
            with self.path.open("r+b") as f:  # drop rows written after the checkpoint
                f.truncate(len(kept))
        self.hash.update(kept)
        self.size, self.rows = len(kept), rows
        self.file = self.path.open("a", newline="")

    def _append(self, text: str) -> None:
        self.file.write(text)
        self.file.flush()  # in the OS after every update: survives a killed process
        encoded = text.encode()
        self.hash.update(encoded)
        self.size += len(encoded)

    def write(self, row: dict[str, Any]) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise KeyError(f"columns not in the schema of {self.path.name}: {sorted(unknown)}")
        self._append(",".join(_cell(row.get(c)) for c in self.columns) + "\n")
        self.rows += 1

    def position(self) -> MetricsPosition:
        return MetricsPosition(self.rows, self.size, self.hash.hexdigest())

    def truncate_to(self, position: MetricsPosition) -> None:
        """Forget the rows written after ``position`` (an update that will be recomputed)."""
        self.file.flush()
        self.file.truncate(position.size)
        self.size, self.rows = position.size, position.rows
        self.hash = hashlib.sha256(self.path.read_bytes()[:position.size])

    def sync(self) -> None:
        """Force the rows to disk (at checkpoints): survives a crash of the machine too."""
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


#: The hosts an API key in ~/.netrc may be stored for: W&B's own and, from wandb 0.29 on, the
#: default server of the wandb client (CoreWeave Forge).
WANDB_HOSTS = ("api.wandb.ai", "api.forge.coreweave.com")


def _metrics_advice() -> str:
    return ("Put back a good copy of metrics.csv if you keep one, or start a new run directory "
            "(another hydra.run.dir)")


def check_present(path: Path, rows: int) -> None:
    """A checkpoint of ``rows`` rows (> 0) of ``path`` needs the file: a resume must not start
    it again without them (:class:`~trpo_lab.rundir.RunFileError`, exit 2)."""
    if rows > 0 and not path.exists():
        raise RunFileError(path, f"missing, but the checkpoint stands on its first {rows} rows",
                           start_over_advice(path), exit_code=2)


def checkpointed_rows(path: Path, data: bytes, rows: int,
                      expected: MetricsPosition | None) -> bytes:
    """The bytes of metrics.csv that a checkpoint of ``rows`` updates stands on (header and
    rows), checked; :class:`~trpo_lab.rundir.RunFileError` if they are not intact. Rows after
    them (written after the checkpoint) are not part of it."""
    if expected is not None:
        return check_prefix(path, data, expected)
    return check_rows(path, data, rows)  # a checkpoint from before positions were recorded


def check_prefix(path: Path, data: bytes, expected: MetricsPosition) -> bytes:
    """The first ``expected.size`` bytes of the file, if they are exactly what was checkpointed."""
    if len(data) < expected.size:
        raise RunFileError(path, f"cut: {len(data)} bytes where the checkpoint's "
                           f"{expected.rows} rows need {expected.size}", _metrics_advice())
    kept = data[:expected.size]
    if hashlib.sha256(kept).hexdigest() != expected.sha256:
        raise RunFileError(path, f"changed since the checkpoint: its first {expected.rows} rows "
                           f"are not the ones the checkpoint recorded", _metrics_advice())
    return kept


def check_rows(path: Path, data: bytes, rows: int) -> bytes:
    """Header and rows 0..rows-1, each complete; what follows them is dropped."""
    lines = data.split(b"\n")
    header = lines[0].decode(errors="replace").split(",")
    if header[0] != "iteration" or set(header) - set(metric_columns()):
        raise RunFileError(path, "its header is not a trpo-lab metrics header",
                           _metrics_advice())
    complete = lines[1:-1]  # the last element follows the final newline: empty or a cut line
    for k in range(rows):
        cells = complete[k].decode(errors="replace").split(",") if k < len(complete) else None
        if cells is None or len(cells) != len(header) or cells[0] != str(k):
            raise RunFileError(path, f"row {k} of the checkpoint's {rows} is missing or cut",
                               _metrics_advice())
    return b"\n".join(lines[:rows + 1]) + b"\n"


def wandb_api_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    hosts = [*WANDB_HOSTS, urlsplit(os.environ.get("WANDB_BASE_URL", "")).hostname or ""]
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        text = netrc.read_text()
    except OSError:
        return False
    return any(host and host in text for host in hosts)


def resolve_wandb_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE") in ("offline", "online", "disabled"):
        return os.environ["WANDB_MODE"]
    return "online" if wandb_api_key_configured() else "offline"


def wandb_server(base_url: str, environ: Mapping[str, str]) -> tuple[str, int]:
    """Where a connection to the W&B server at ``base_url`` goes first: the https (or http)
    proxy when ``environ`` sets one, else the server itself."""
    url = urlsplit(base_url)
    scheme = url.scheme or "https"
    proxy = next((environ[k] for k in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY")
                  if environ.get(k)), None)
    target = url
    if proxy:
        target = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    default_port = 443 if target.scheme == "https" else 80
    return target.hostname or "localhost", target.port or default_port


def connection_problem(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection to ``host:port`` opens within ``timeout`` seconds, else what
    went wrong. Name resolution counts against the timeout too (the attempt runs in a thread:
    ``getaddrinfo`` itself has no timeout)."""
    outcome: dict[str, OSError | None] = {}

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome["error"] = None
        except OSError as error:
            outcome["error"] = error

    thread = threading.Thread(target=attempt, name="wandb-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if "error" not in outcome:
        return f"no connection within {timeout:g} s"
    error = outcome["error"]
    return None if error is None else f"{type(error).__name__}: {error.strerror or error}"


class WandbRun:
    """A real wandb run that never prompts and never blocks training.

    The mode goes into the environment before wandb starts (an ``init(mode="offline")`` alone
    still contacts the server at exit). ``wandb.init`` (about a second: it starts W&B's service
    process) runs in a background thread while training starts; rows logged before it is ready
    are queued and sent in order, with the update index as W&B's step, so that a resumed run's
    history continues where the checkpoint left it.

    A run meant to log online first opens a TCP connection to the W&B server wandb would use
    (its ``base_url``: ``WANDB_BASE_URL``, ``wandb login --host`` or wandb's default; or the
    proxy) within ``connect_timeout`` seconds; without one it logs offline instead of waiting
    for W&B's own 60 s init timeout. An online ``init`` that still fails falls back to offline
    too, and removes the run directory the failed attempt left. Either way one line on stderr
    says so and how to upload the run later, and :attr:`fallback` keeps the reason. If W&B
    cannot start at all, or a ``log`` raises, training goes on with a warning, since
    metrics.csv is the record of the run.
    """

    def __init__(self, *, mode: str, project: str, entity: str | None, group: str | None,
                 job_type: str, tags: list[str], name: str, config: dict, run_dir: Path,
                 run_id: str, connect_timeout: float = 1.0, reinit: str = "finish_previous"):
        """``reinit``: ``finish_previous`` (a process's runs one after another: a run left
        open by an earlier job is finished) or ``create_new`` (several runs open at once in one
        process: a group of runs, trpo_lab.group)."""
        os.environ["WANDB_MODE"] = mode
        # W&B logs into files of the run directory (wandb/*/logs): on a full disk every record
        # would print a "--- Logging error ---" traceback, burying the run's own one-line error
        pylogging.raiseExceptions = False
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("WANDB_CONSOLE", "off")
        self.mode = mode
        self.fallback: str | None = None  # why a run meant to log online logs offline
        self.connect_timeout = connect_timeout
        self.run_dir, self.run_id = run_dir, run_id
        self.kwargs = dict(project=project, entity=entity, group=group, job_type=job_type,
                           tags=tags, name=name, config=config, dir=str(run_dir), id=run_id,
                           resume="allow", reinit=reinit)
        self.run = None
        self.local_dir: str | None = None
        self.url: str | None = None
        self.error: BaseException | None = None
        self.pending: list[dict[str, Any]] = []
        self.pairs: list[list[float]] = []
        self.thread = threading.Thread(target=self._start, name="wandb-init", daemon=True)
        self.thread.start()

    def _online_run_dirs(self) -> set[Path]:
        return set((self.run_dir / "wandb").glob(f"run-*-{self.run_id}"))

    def _server_problem(self) -> str | None:
        """Why the W&B server wandb would use cannot be reached, or None."""
        base_url = self.wandb.setup().settings.base_url
        host, port = wandb_server(base_url, os.environ)
        problem = connection_problem(host, port, self.connect_timeout)
        return None if problem is None else f"cannot reach {host}:{port} ({problem})"

    def _go_offline(self, reason: str) -> None:
        """Forget the online attempt (W&B's settings, its analytics) and log offline."""
        self.fallback = reason
        self.wandb.teardown()  # the online settings, and a failed attempt's hold on the run id
        # W&B's own analytics would report a failed init to the same server at exit and log
        # its refusal through the root logger (Hydra prints that like an error)
        pylogging.getLogger("opentelemetry").setLevel(pylogging.CRITICAL)
        os.environ["WANDB_MODE"] = self.mode = "offline"

    def _start(self) -> None:
        try:
            import wandb

            self.wandb = wandb
            before = self._online_run_dirs()
            run = None
            if self.mode == "online":
                problem = self._server_problem()
                if problem is not None:
                    self._go_offline(problem)
            try:
                run = wandb.init(settings=self._settings(self.mode), **self.kwargs)
            except Exception as error:  # noqa: BLE001  (any failure to reach W&B: go offline)
                if self.mode != "online":
                    raise
                self._go_offline(f"online init failed ({first_line(error)})")
                for leftover in self._online_run_dirs() - before:
                    shutil.rmtree(leftover, ignore_errors=True)
            if run is None:
                run = wandb.init(settings=self._settings("offline"), **self.kwargs)
            self.local_dir = str(Path(run.dir).parent)
            self.url = getattr(run, "url", None) if self.mode == "online" else None
            if self.fallback is not None:
                print(f"trpo-lab: W&B: {self.fallback}, so logging offline to {self.local_dir}; "
                      f"upload later with: wandb sync {self.local_dir}",
                      file=sys.stderr, flush=True)
            run.define_metric("env_steps")
            run.define_metric("*", step_metric="env_steps")
            self.run = run
        except Exception as error:  # noqa: BLE001  (reported once, by _ready)
            self.error = error

    def _settings(self, mode: str):
        timeout = float(os.environ.get("WANDB_INIT_TIMEOUT", 60))
        return self.wandb.Settings(mode=mode, console="off", silent=True, init_timeout=timeout,
                                   x_disable_stats=True, x_disable_machine_info=True)

    def _ready(self) -> bool:
        """Wait for init; send queued rows. False if W&B could not start."""
        self.thread.join()
        if self.error is not None:
            warnings.warn(f"W&B could not start ({self.error}); metrics.csv keeps the data",
                          stacklevel=3)
            self.error, self.pending = None, []
        if self.run is None:
            return False
        queued, self.pending = self.pending, []
        for row in queued:
            self._send(row)
        return True

    def final_mode(self) -> str | None:
        """The mode W&B really logs in (``online``, ``offline``, ``disabled``) once its init
        has finished; None when W&B could not start."""
        self.thread.join()
        return self.mode if self.run is not None else None

    def planned_location(self) -> str:
        """Where the run's W&B data goes, known before init finishes: the offline run's
        directory pattern, or the online run's project and id."""
        if self.mode == "offline":
            return str(self.run_dir / "wandb" / f"offline-run-*-{self.run_id}")
        project = "/".join(p for p in (self.kwargs["entity"], self.kwargs["project"]) if p)
        return f"{project}, run id {self.run_id}"

    def location(self) -> tuple[str | None, str | None]:
        """``(local directory, URL)`` of the started run (URL None offline)."""
        return self.local_dir, self.url

    def _send(self, row: dict[str, Any]) -> None:
        try:
            self.run.log(row, step=int(row["iteration"]))
        except Exception as error:  # noqa: BLE001  (the CSV is the record; keep training)
            warnings.warn(f"W&B log failed ({error}); metrics.csv keeps the data", stacklevel=3)

    def log(self, row: dict[str, Any]) -> None:
        clean = {k: v for k, v in row.items()
                 if v is not None and not (isinstance(v, float) and math.isnan(v))}
        if "surrogate/improvement" in clean and "true/improvement" in clean:
            heldout = float(clean.get("surrogate/improvement_heldout", math.nan))
            true = float(clean["true/improvement"])
            self.pairs.append([float(row["iteration"]), float(row["env_steps"]),
                               float(clean["surrogate/improvement"]), heldout,
                               float(clean.get("surrogate/improvement_heldout_se", math.nan)),
                               true, float(clean.get("true/improvement_se", math.nan)),
                               heldout - true, float(clean.get("kl/max", math.nan))])
        if self.thread.is_alive():
            self.pending.append(clean)
        elif self._ready():
            self._send(clean)

    def log_checkpoint(self, path: Path, iteration: int, env_steps: int) -> None:
        """Log the checkpoint file as a version of the run's W&B artifact
        ``checkpoint-<run id>`` (type ``model``), aliased ``latest`` and ``update-<k>`` (k
        updates done). Offline it is stored in the offline run and uploaded by ``wandb sync``."""
        if not self._ready():
            return
        try:
            artifact = self.wandb.Artifact(
                f"checkpoint-{self.run_id}", type="model",
                metadata={"iteration": iteration, "env_steps": env_steps})
            artifact.add_file(str(path), name=path.name)  # a copy: the next checkpoint replaces it
            self.run.log_artifact(artifact, aliases=["latest", f"update-{iteration}"])
        except Exception as error:  # noqa: BLE001  (the checkpoint on disk is the record)
            warnings.warn(f"W&B checkpoint artifact failed ({error}); checkpoint.pt keeps it",
                          stacklevel=2)

    def finish(self, status: str, summary: dict[str, Any], exit_code: int | None = None,
               tables: Mapping[str, tuple[list[str], list[list[Any]]]] | None = None,
               quiet: bool = False) -> None:
        """Finish the W&B run: ``exit_code`` 0 for a completed run (W&B: finished), 1 for a
        failed one (failed); an interrupted run is marked preempting (W&B: preempted, the state
        of a run that stopped early and resumes later, not failed) and finishes with its
        process's exit code (130 after Ctrl-C). ``tables`` (name -> (columns, rows)) become
        summary tables beside ``improvement_pairs``. ``quiet``: W&B's own failures are not
        reported (the run failed writing its directory: a full disk fails W&B's files too, and
        the run's one-line error already says so)."""
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")
            self._finish(status, summary, exit_code, tables)

    def _finish(self, status: str, summary: dict[str, Any], exit_code: int | None,
                tables: Mapping[str, tuple[list[str], list[list[Any]]]] | None) -> None:
        if not self._ready():
            return
        if exit_code is None:
            exit_code = {"completed": 0, "interrupted": 130}.get(status, 1)
        try:
            if self.pairs:
                table = self.wandb.Table(columns=IMPROVEMENT_PAIRS_COLUMNS, data=self.pairs)
                self.run.summary["improvement_pairs"] = table  # a summary, not a history row
            for name, (columns, rows) in (tables or {}).items():  # e.g. the probes
                self.run.summary[name] = self.wandb.Table(columns=columns, data=rows)
            for key, value in summary.items():
                if isinstance(value, int | float | str) and not isinstance(value, bool):
                    self.run.summary[key] = value
            if status == "interrupted":
                self.run.mark_preempting()
            self.run.finish(exit_code=exit_code)
        except Exception as error:  # noqa: BLE001
            warnings.warn(f"W&B finish failed ({error})", stacklevel=2)
