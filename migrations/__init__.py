"""Schema migrations, applied in order by ``mpi migrate`` (see mpi.storage.migrate).

Each file ``NNNN_name.py`` defines ``upgrade(db)``. A migration is frozen once
released: it carries its own copies of the models it creates, so later model
changes never alter what an old migration does. The same files run on SQLite
and PostgreSQL.
"""
