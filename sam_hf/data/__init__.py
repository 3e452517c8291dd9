"""Data: one schema, converters into Arrow caches, transforms and prompt simulation.

By job: ``schema`` (the one sample schema), ``rle`` (the one RLE module), ``images`` and
``stored_image`` (reading images as stored), ``report`` / ``checks`` / ``build`` /
``output`` / ``leftovers`` (converting into atomic, owned output folders), ``sources/`` (one
converter per format), ``synthetic/`` (generated data), ``cards/`` (dataset cards),
``prepare`` / ``views`` (what a recipe trains and evaluates on), ``transforms``,
``prompts`` (SAM2 prompt simulation), ``tokenizer`` / ``queries`` (SAM3 phrases and
negatives), ``collate`` and ``overlays`` (masks drawn over images).
"""
