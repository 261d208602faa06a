"""The HTML report: ranking tables, curves, score distributions and example frames of results files.

The engine :func:`oodseg.workflows.report.build_report` (``oodseg report``) reads the JSON files written by ``oodseg evaluate``,
``meta``, ``train`` and ``score`` (docs/results-schema.md) found under ``results_dir``
and writes one self-contained folder: ``index.html`` (inline CSS/JS, no network
resources), PNG charts and frames, and the tables as markdown, CSV and JSON.
"""
from oodseg.report.loading import Results, load_results

__all__ = ["Results", "load_results"]
