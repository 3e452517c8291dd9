"""Dataset cards (HF card format) written next to every prepared dataset."""
