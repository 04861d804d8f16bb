"""The MemMachine-compatible REST API v2 (``/api/v2``): its routes and its bodies."""
