"""The change feed (``feed``): every committed change, in commit order, read by clients.

The vocabulary (event types) is in ``mpi.domain.events``; events are appended by every
unit of work (``mpi.storage.work``) and read back by ``mpi.storage.changes``.
"""
