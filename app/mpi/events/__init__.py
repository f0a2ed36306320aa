"""The durable change log, read as an ordered feed."""

from mpi.events.log import ChangeEvent, ChangeLog

__all__ = ["ChangeEvent", "ChangeLog"]
