"""Domain types shared by storage, services and the API: no HTTP, no SQL."""
