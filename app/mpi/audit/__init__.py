"""Reading the audit trail (``trail``), itself audited.

The vocabulary (actors, tags) is in ``mpi.domain.audit``; rows are written by every unit
of work (``mpi.storage.work``) and read back by ``mpi.storage.audit``.
"""
