"""The audit log: who did what to which record, reads included."""

from mpi.audit.log import Actor, AuditEntry, AuditLog

__all__ = ["Actor", "AuditEntry", "AuditLog"]
