"""The project's benchmarks, a folder per family, run from a checkout.

``run.py`` is the entry of the performance sections (``overhead/``, ``efficiency/``,
``memory/``, ``scale/``, ``gpu/``); ``peers/`` compares with the peers by real training,
``quality/`` on the simulator, ``reliability/`` injects faults (chaos, soak). What they share is
``common.py``. Modules import each other as ``benchmarks.<family>.<module>``: every entry script
puts the repository's root on ``sys.path`` first.
"""
