"""finetune-search: distributed hyperparameter search for transfer learning.

The library's entry points (the CLI only calls these):

- :func:`search.spec.load_spec` reads and validates an experiment spec.
- :func:`search.service.run_search`, :func:`~search.service.resume_search` and
  :func:`~search.service.extend_search` run searches.
"""

__version__ = "0.1.0"
