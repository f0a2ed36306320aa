"""HTTP API (Falcon): ``create_app(settings)`` wires everything; ``get_app()`` is for gunicorn."""
