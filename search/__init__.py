"""finetune-search: distributed hyperparameter search for transfer learning.

The public API (the CLI only calls these). Imports are lazy, so ``import search`` and
``finetune-search --help`` stay fast; the modules behind them import Ray and TensorFlow only
when called.

- :func:`load_spec` reads and validates an experiment spec.
- :func:`run_search`, :func:`resume_search` and :func:`extend_search` run searches.
- :func:`export_experiment`, :func:`retrain` and :func:`write_report` use their results;
  :func:`experiment_status` reads where a search stands; :func:`predict_images` runs a model.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

# public name -> the module that defines it
_EXPORTS = {
    "load_spec": "search.spec",
    "ExperimentSpec": "search.spec",
    "run_search": "search.driver.service",
    "resume_search": "search.driver.service",
    "extend_search": "search.driver.service",
    "SearchSummary": "search.driver.service",
    "export_experiment": "search.outputs.export",
    "retrain": "search.outputs.retrain",
    "write_report": "search.outputs.report",
    "load_trials": "search.outputs.results",
    "experiment_status": "search.outputs.status",
    "predict_images": "search.outputs.predict",
    "SpecError": "search.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'search' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
