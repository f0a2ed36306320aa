"""Build tests use the shared PEX builds (tests/pexbuilds.py, registered in tests/conftest.py)."""
