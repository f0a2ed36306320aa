"""Benchmarks behind ``nox -s bench``; each compares against a peer measured in the same run.

- ``bench.api`` (``nox -s bench``): API throughput and latency on PostgreSQL next to a bare
  Falcon route served the same way.
- ``bench.matching`` (``nox -s bench -- matching``): matching quality and speed on the FEBRL
  data sets next to Splink.
- ``bench.identity`` (``nox -s bench -- identity``): bulk import and online matching at
  100,000 persons.
- ``bench.search`` (``nox -s bench -- search``): index build time and query latency next to
  ILIKE / pg_trgm, and the write-to-searchable lag.

Reports go to ``.bench/``. The build and test helpers they share live in ``toolkit/``.
"""
