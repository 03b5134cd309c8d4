"""torchkiln: from data and a short YAML file to a trained, evaluated and packaged PyTorch model.

The public Python API mirrors the CLI::

    import torchkiln
    cfg = torchkiln.load_config("kiln.yaml")
    run_dir = torchkiln.train(cfg)
    report = torchkiln.evaluate(run_dir)
    predictor = torchkiln.load_predictor(run_dir / "bundle")
    predictor.predict(["shoe.png"])
    result = torchkiln.export(run_dir, quantize="static")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchkiln.core._version import __version__

__all__ = ["__version__", "evaluate", "export", "load_config", "load_predictor", "train"]

if TYPE_CHECKING:
    from torchkiln.api import evaluate, export, load_config, load_predictor, train


def __getattr__(name: str) -> Any:
    # Lazy: `import torchkiln` stays cheap and creates no state; torch loads on first use.
    if name in ("evaluate", "export", "load_config", "load_predictor", "train"):
        from torchkiln import api

        return getattr(api, name)
    raise AttributeError(f"module 'torchkiln' has no attribute '{name}'")
