"""Evaluation: how far is SAM2's prompt expertise from SAM3's concept understanding on *your*
data, before and after fine-tuning -- and how much of it is SAM3's backbone (the SAM3 tracker,
prompted exactly like SAM2)?

Every family is scored on the same images of a prepared split, each with its own protocol,
plus columns that mean the same for all. By job, in import order:

* :mod:`~sam_hf.eval.sources`: what a model source names, and loading it;
* :mod:`~sam_hf.eval.settings`: what decides the numbers (read from the fine-tune's config);
* :mod:`~sam_hf.eval.data`: the evaluated images and their batches;
* :mod:`~sam_hf.eval.bootstrap`: the equal-prompt gap (SAM3 tracker minus SAM2) and its
  paired bootstrap interval over images;
* :mod:`~sam_hf.eval.compare`: per-model results, fine-tuned vs baseline, SAM2 vs SAM3;
* :mod:`~sam_hf.eval.sam2` / :mod:`~sam_hf.eval.sam3`: the two protocols (point/box models:
  SAM2 and the SAM3 tracker; text: SAM3);
* :mod:`~sam_hf.eval.run`: every model in turn on the same images;
* :mod:`~sam_hf.eval.report`, :mod:`~sam_hf.eval.plots`, :mod:`~sam_hf.eval.overlay_grid`:
  writing it down (tables, charts, best/worst overlays); :mod:`~sam_hf.eval.pictures`: what
  every overlay picture shares (size, colours per phrase, labels that never collide);
* :mod:`~sam_hf.eval.run_curves`: a training run's loss and metric curves.
"""
