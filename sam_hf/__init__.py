"""sam_hf: fine-tune SAM2 and SAM3 from transformers on your own data."""

__version__ = "0.1.0"
