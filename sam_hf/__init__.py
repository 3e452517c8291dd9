"""sam_hf: fine-tune SAM2 and SAM3 from transformers on your own data.

The package is laid out by pipeline stage, and a module imports only from the stages before
it (``tests/test_layout.py`` enforces the order): ``config`` -> ``data`` -> ``losses`` ->
``metrics`` -> ``models`` -> ``features`` -> ``hub`` -> ``training`` -> ``tasks`` -> ``eval``
-> ``recipe``. Each package's docstring says what it holds.
"""

__version__ = "0.1.0"
