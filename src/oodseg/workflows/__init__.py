"""Command engines: one module per ``oodseg`` command (score, evaluate, meta, train, demo, report).

These modules own everything that touches files — dataset readers, checkpoints, the run-folder
layout ``{out}/{method}/{dataset}/…`` — so that :mod:`oodseg.scores`, :mod:`oodseg.metrics`,
:mod:`oodseg.meta` and the training losses stay pure libraries on tensors and arrays.
"""
