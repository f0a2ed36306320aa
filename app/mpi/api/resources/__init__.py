"""Falcon resources: one class per collection or item, collaborators passed to ``__init__``."""
