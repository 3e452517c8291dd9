"""Metrics with the exact conventions of the official evaluators (``METRICS.md``: the contract).

Two families, which must not be mixed up:

* :mod:`~sam_hf.metrics.masks`: per-instance quality of a prompted mask (SAM2), DAVIS 2017
  IoU, Dice and Boundary F1 (two empty masks agree: IoU = Dice = 1).
* SAM3's concept detection, pycocotools conventions (an empty mask overlaps nothing):
  :mod:`~sam_hf.metrics.matching` (which prediction answers which instance: score cut,
  pairwise IoU, Hungarian and maximum matchings, matched instance IoU),
  :mod:`~sam_hf.metrics.concepts` (SA-Co cgF1 / pmF1 / IL_MCC, concept recall, grounding
  and attribute accuracy) and :mod:`~sam_hf.metrics.coco` (COCO mask AP / AR).

:mod:`~sam_hf.metrics.arrays` holds the input handling and the numpy/torch kernels they
share (exact integer counts on any device); :mod:`~sam_hf.metrics.evaluate_metric` the body
of the ``evaluate`` modules in ``modules/``.
"""
