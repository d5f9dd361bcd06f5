"""What a cell leaves behind: the typed ``Record`` (record.py), written and read atomically one JSON per cell beside
its per-sample log (store.py), with the provenance that makes it reproducible (provenance.py).

May import: the standard library and torch (provenance's device line); nothing else of evalsuite.
"""
