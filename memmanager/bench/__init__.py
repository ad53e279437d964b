"""memmanager's benchmark suite: each operation against its peers.

Run it with ``python -m memmanager.bench`` (needs the ``bench`` extra:
pytest-benchmark, NumPy, cffi, pyarrow, matplotlib) or ``make bench`` in a
checkout.  The suite files here are pytest-benchmark modules; every
benchmark belongs to a *group* (one operation at one size) and is either
memmanager's (``subject="memmanager"``) or a peer's.  The runner turns the
medians into ratios: memmanager's time divided by each peer's.
"""
