"""Procedural data: the bundled product catalog and the caption corpus (test fixtures, not evidence)."""
