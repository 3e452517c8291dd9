"""Procedural data that needs no download: the synthetic orchard (:mod:`~sam_hf.data.synthetic.
orchard`, with apples and foliage drawn in ``orchard_apples`` / ``orchard_foliage``), the
embedded default of the demos and tests, and generic shapes (``shapes``) for pretraining the
shipped tiny checkpoints; ``drawing`` holds the noise and PNG helpers both use."""
