"""``torchrun -m torchkiln.train CONFIG [--set ...]``: ``kiln train`` in each process torchrun starts.

``kiln train CONFIG --nproc N`` runs this on one machine; for several machines start it with torchrun on
each (``--nnodes``, ``--node-rank``, ``--rdzv-endpoint``), as docs/scale.md shows. It takes what
``kiln train`` takes. The processes join one process group; rank 0 writes the run directory.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

from torch.distributed.elastic.multiprocessing.errors import record

from torchkiln.engine import distributed


def _stopped(signum: int, frame: FrameType | None) -> None:
    """torchrun stops the other ranks with SIGTERM when one fails: unwind, so that rank 0 removes a run
    directory that has no checkpoint yet, as a failed one-process run does."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


@record  # an unexpected exception in a rank reaches torchrun's failure summary with its traceback
def main(argv: list[str] | None = None) -> None:
    from torchkiln.cli.main import app

    signal.signal(signal.SIGTERM, _stopped)
    args = sys.argv[1:] if argv is None else argv
    try:
        app(args=["train", *args], prog_name="torchrun -m torchkiln.train")
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
