"""The ``mpi`` command groups, above the composition root (``mpi.wiring``).

- ``service``   serve, healthcheck, version, config check
- ``database``  migrate
- ``registry``  import, export (through the online linking path)
- ``matching``  dedupe, link, train, blocking report (files; no database unless asked)
- ``search``    reindex
- ``failures``  how a command that fails says why: one line, a non-zero exit

Each group registers its sub-commands with ``register(commands)`` and imports only the
standard library until one of them runs: ``mpi healthcheck`` runs every few seconds in
containers and must start fast. Commands build what they use with ``mpi.wiring`` and
import nothing from ``mpi.api``.
"""
