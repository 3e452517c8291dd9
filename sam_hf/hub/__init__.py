"""The Hub stage: a finished run's model card and the pushes of runs and datasets.

:mod:`~sam_hf.hub.cards` renders the model card of a run from what it saved (config, eval
results); :mod:`~sam_hf.hub.push` uploads a run's model folder or a prepared dataset, and turns
any failure into one line that says how to fix it.
"""
