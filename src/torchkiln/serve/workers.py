"""Keep every gunicorn worker of one ``kiln serve --workers N`` on the same model versions.

Each worker is its own process with its own copy of the models, and one HTTP request reaches one of
them. A reload (``POST /admin/reload``, or a registry alias that the poll saw move) therefore goes
through a folder that ``kiln serve`` makes before gunicorn forks the workers:

- ``desired.json``: a generation number and, per model and arm, the version to serve and the URI that
  loads exactly it (``models:/NAME/3`` where the settings say ``models:/NAME@champion``, so every worker
  loads the same version even if the alias moves meanwhile). Replaced whole, through a rename, under
  the ``lock`` file's exclusive lock. Also per model, the traffic rule (challenger weight, shadow on or
  off) once ``PUT /admin/models/NAME/traffic`` changed it.
- ``workers/PID.json``: each worker's report: the generation it has applied, the version it serves per
  model and arm, its traffic rule per model, and the arms that failed to load.

Every worker checks ``desired.json`` every 100 ms (one ``stat``) and loads what differs. The worker that
answers a reload publishes the new generation, waits until every live worker reports it, and only then
answers. A worker that starts later (gunicorn replaces one that died) loads ``desired.json``'s versions,
not the ones in the settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from torchkiln.core.io import atomic_write_text

DESIRED, LOCK, REPORTS = "desired.json", "lock", "workers"
WATCH_INTERVAL_S = 0.1


@dataclass(frozen=True)
class Target:
    """What one arm must serve: ``version``, loaded from ``uri``."""

    uri: str
    version: str


Targets = dict[str, dict[str, Target]]  # model -> arm -> target


@dataclass(frozen=True)
class Traffic:
    """How a model's requests reach its challenger: a sticky A/B share, or a mirror of every request."""

    challenger_weight: float = 0.0
    shadow: bool = False

    def to_dict(self) -> dict[str, float | bool]:
        return {"challenger_weight": self.challenger_weight, "shadow": self.shadow}


@dataclass(frozen=True)
class Desired:
    """``desired.json``: the generation, what each arm serves, and the traffic rules changed at runtime."""

    generation: int = 0
    targets: Targets = field(default_factory=dict)
    traffic: dict[str, Traffic] = field(default_factory=dict)  # model -> rule; absent: the settings'


@dataclass(frozen=True)
class Report:
    """One worker's state, as it last wrote it."""

    pid: int
    generation: int
    served: dict[str, dict[str, str]]  # model -> arm -> version
    errors: dict[str, dict[str, str]]  # model -> arm -> the last load failure
    traffic: dict[str, Traffic]  # model -> the rule it applies


@dataclass(frozen=True)
class Agreement:
    """How many workers serve a published generation, and what the others do instead."""

    workers: int
    agreeing: int
    problems: list[str]


class WorkerSync:
    """The shared folder of one server's workers (see the module docstring).

    Example:
        >>> sync = WorkerSync(Path("/tmp/kiln-serve-x/sync"), workers=2)
        >>> generation = sync.publish({"shapes": {"champion": Target("runs/a/bundle", "3f2a9c1b0d4e")}})
    """

    def __init__(self, folder: Path, workers: int) -> None:
        self.folder, self.workers = Path(folder), workers
        (self.folder / REPORTS).mkdir(parents=True, exist_ok=True)
        self._seen: tuple[int, int, int] | None = None  # desired.json's (mtime_ns, size, inode), last read

    # --- desired.json -------------------------------------------------------------------------------------
    def desired(self) -> Desired:
        """What was published last; generation 0 and nothing else before the first publication."""
        try:
            data = json.loads((self.folder / DESIRED).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return Desired()
        targets = {
            model: {arm: Target(t["uri"], t["version"]) for arm, t in arms.items()}
            for model, arms in data["models"].items()
        }
        traffic = {model: Traffic(**rule) for model, rule in data.get("traffic", {}).items()}
        return Desired(int(data["generation"]), targets, traffic)

    def changed(self) -> bool:
        """Whether ``desired.json`` changed since the last call (a ``stat``, cheap enough to poll)."""
        try:
            st = (self.folder / DESIRED).stat()
        except FileNotFoundError:
            return False
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if seen == self._seen:
            return False
        self._seen = seen
        return True

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        """The folder's exclusive lock, across processes: one reload publishes at a time."""
        fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def publish(self, targets: Targets, traffic: dict[str, Traffic] | None = None) -> int:
        """Merge ``targets`` (and traffic rules) into ``desired.json`` as the next generation; call while
        :meth:`locked`."""
        current = self.desired()
        merged = current.targets | targets
        body = {
            "generation": current.generation + 1,
            "models": {
                model: {arm: {"uri": t.uri, "version": t.version} for arm, t in arms.items()}
                for model, arms in merged.items()
            },
            "traffic": {m: rule.to_dict() for m, rule in (current.traffic | (traffic or {})).items()},
        }
        atomic_write_text(self.folder / DESIRED, json.dumps(body, indent=1))
        return current.generation + 1

    # --- reports ------------------------------------------------------------------------------------------
    def report(
        self,
        generation: int,
        served: dict[str, dict[str, str]],
        errors: dict[str, dict[str, str]],
        traffic: dict[str, Traffic],
    ) -> None:
        """Write this worker's report."""
        rules = {m: rule.to_dict() for m, rule in traffic.items()}
        body = {
            "pid": os.getpid(),
            "generation": generation,
            "served": served,
            "errors": errors,
            "traffic": rules,
        }
        atomic_write_text(self.folder / REPORTS / f"{os.getpid()}.json", json.dumps(body))

    def forget(self, pid: int) -> None:
        """Drop a dead worker's report (the gunicorn master calls this when a worker exits)."""
        with contextlib.suppress(FileNotFoundError):
            (self.folder / REPORTS / f"{pid}.json").unlink()

    def reports(self) -> list[Report]:
        """The reports of the workers that are alive."""
        out = []
        for path in sorted((self.folder / REPORTS).glob("*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (FileNotFoundError, ValueError):
                continue  # removed meanwhile; a report is replaced by a rename, never half-written
            if _alive(int(data["pid"])):
                rules = {m: Traffic(**rule) for m, rule in data.get("traffic", {}).items()}
                out.append(
                    Report(int(data["pid"]), int(data["generation"]), data["served"], data["errors"], rules)
                )
        return out

    async def wait(
        self, generation: int, targets: Targets, timeout_s: float, traffic: dict[str, Traffic] | None = None
    ) -> Agreement:
        """Wait until every worker has applied ``generation``, then compare what each serves with ``targets``
        (and the traffic rule it applies with ``traffic``).

        Returns after ``timeout_s`` at the latest; the missing workers are then among the problems.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            reports = self.reports()
            done = [r for r in reports if r.generation >= generation]
            if len(done) >= self.workers or time.monotonic() >= deadline:
                break
            await asyncio.sleep(WATCH_INTERVAL_S / 2)
        problems = []
        if len(done) < self.workers:
            problems.append(
                f"{self.workers - len(done)} of {self.workers} workers did not apply the reload within "
                f"{timeout_s:g} s"
            )
        agreeing = 0
        for r in done:
            wrong = [
                _disagreement(model, arm, target, r)
                for model, arms in targets.items()
                for arm, target in arms.items()
                if r.served.get(model, {}).get(arm) != target.version
            ]
            wrong += [
                f"{model} routes {r.traffic.get(model)}, not {rule}"
                for model, rule in (traffic or {}).items()
                if r.traffic.get(model) != rule
            ]
            problems += [f"worker {r.pid}: {w}" for w in wrong]
            agreeing += not wrong
        return Agreement(self.workers, agreeing, problems)


def _disagreement(model: str, arm: str, target: Target, r: Report) -> str:
    have = r.served.get(model, {}).get(arm)
    serving = f"serves version {have}" if have else "serves no version"
    error = r.errors.get(model, {}).get(arm)
    return f"{model}/{arm} {serving}, not {target.version}" + (f" ({error})" if error else "")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pinned_uri(uri: str, version: str) -> str:
    """The URI that loads exactly ``version``: ``models:/NAME@ALIAS`` becomes ``models:/NAME/VERSION``."""
    if uri.startswith("models:/") and "@" in uri:
        return f"{uri.split('@', 1)[0]}/{version}"
    return uri
