"""Scoring: calibration, fusion, fitting them, facets and ranking metrics. Pure functions where possible."""
