"""Benchmarks: compute-faithful benchmark models (``export_models``), model micro-benchmarks (``micro``)
and their shared table, JSON and environment helpers (``common``)."""
