"""Full-text patient search: a whoosh index as a derived, rebuildable projection of the database.

- ``schema``   the index's fields and analyzers; the document for a record
- ``store``    the index directory: generations, the CURRENT pointer, the writer lock
- ``indexer``  follows the change log into the index (one writer per directory); rebuilds
- ``process``  the indexer's own process under ``mpi serve``, forked by the gunicorn master
- ``index``    the read side each worker keeps (``WhooshSearchIndex``) and ``NullSearchIndex``
- ``query``    the search language, parsed strictly into whoosh queries
- ``service``  search = index hits + current records from the database + an audit row

``mpi reindex`` is in ``mpi.commands.search``.
"""
