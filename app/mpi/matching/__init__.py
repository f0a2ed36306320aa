"""Record matching: pure Python (rapidfuzz, jellyfish, nicknames); no database or HTTP imports.

The identity layer converts stored patients into :class:`MatchRecord`, prepares them once
(:func:`prepare`), stores :func:`blocking_keys` per record, scores candidates with a
:class:`Scorer` built from a versioned :class:`Model`, and calls :func:`decide`.

Names are imported lazily (PEP 562) so that ``mpi healthcheck``, which registers the
matching commands on its parser, does not pay for rapidfuzz and jellyfish at start-up.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MatchRecord": "record", "PreparedRecord": "record", "prepare": "record",
    "blocking_keys": "blocking",
    "Model": "model", "ModelError": "model",
    "ComparisonResult": "scoring", "Score": "scoring", "Scorer": "scoring", "score": "scoring",
    "Candidate": "linker", "Decision": "linker", "Linker": "linker", "decide": "linker",
    "dedupe": "batch", "link": "batch",
    "train": "training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mpi.matching' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mpi.matching.{module}"), name)
