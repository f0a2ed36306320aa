"""Persistence: peewee models, the database proxy, migrations and repositories."""
