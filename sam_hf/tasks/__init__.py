"""Per-family glue for the trainer: :class:`~sam_hf.tasks.sam2.Sam2Task` and
:class:`~sam_hf.tasks.sam3.Sam3Task` tell the shared loop which model, data views, collator,
caches, records and metrics a family uses; the work itself lives in the stages above."""
