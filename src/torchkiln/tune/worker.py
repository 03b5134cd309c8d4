"""A worker process of ``kiln tune --workers K``: ``python -m torchkiln.tune.worker STUDY_JSON INDEX``.

It runs trials of the study that ``STUDY_JSON`` (a :class:`~torchkiln.tune.study.StudySpec`) names, in the
storage that ``$KILN_TUNE_STORAGE`` names (a URL may hold a password: it is kept out of the file), until
the study has its trials; the lead process started it and waits for it. Exit code 2: a config or data
error, printed without a traceback, as ``kiln`` does.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from torchkiln.core.errors import KilnError
from torchkiln.tune.storage import STORAGE_ENV
from torchkiln.tune.study import StudySpec, run_worker


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print(
            "usage: python -m torchkiln.tune.worker STUDY_JSON INDEX (kiln tune starts it)", file=sys.stderr
        )
        return 2
    spec = StudySpec.read(Path(argv[0]))
    spec = dataclasses.replace(spec, storage=os.environ.get(STORAGE_ENV, spec.storage))
    try:
        run_worker(spec, worker=int(argv[1]))
    except KilnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
