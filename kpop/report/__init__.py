"""Seeing a run: metric sinks and per-step statistics (used while a run writes its metrics), and
the `kpop report` renderer (plots + HTML, used afterwards).

Importing this package is cheap: matplotlib is imported only by `kpop.report.plots`.
"""
