"""Patient records: create, read, update, retire; each write one unit of work with its
link decision, audit rows and change events (``service``)."""
