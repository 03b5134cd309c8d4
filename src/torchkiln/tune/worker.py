"""A worker process of ``kiln tune --workers K``: ``python -m torchkiln.tune.worker STUDY_JSON INDEX``.

It runs trials of the study that ``STUDY_JSON`` (a :class:`~torchkiln.tune.study.StudySpec`) names until
the study has its trials; the lead process started it and waits for it. Exit code 2: a config or data
error, printed without a traceback, as ``kiln`` does.
"""

from __future__ import annotations

import sys
from pathlib import Path

from torchkiln.core.errors import KilnError
from torchkiln.tune.study import StudySpec, run_worker


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print(
            "usage: python -m torchkiln.tune.worker STUDY_JSON INDEX (kiln tune starts it)", file=sys.stderr
        )
        return 2
    try:
        run_worker(StudySpec.read(Path(argv[0])), worker=int(argv[1]))
    except KilnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
