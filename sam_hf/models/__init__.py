"""The models: SAM2 and SAM3 from transformers, built from a Hub id, a local folder or a
named tiny config (:mod:`~sam_hf.models.sam2`, :mod:`~sam_hf.models.sam3`, with the source
resolution and its error messages in :mod:`~sam_hf.models.loading`); what trains and what is
frozen (:mod:`~sam_hf.models.freezing`, LoRA in :mod:`~sam_hf.models.lora`); the training
forward that simulates prompts and returns the loss (:mod:`~sam_hf.models.sam2_training`, and
SAM3's in :mod:`~sam_hf.models.sam3`); and :mod:`~sam_hf.models.finetune` (init_from, export)."""
