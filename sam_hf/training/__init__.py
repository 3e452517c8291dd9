"""The training stage: one loop for every model family, on Accelerate.

``loop`` orchestrates a run (:func:`~sam_hf.training.loop.train`); ``step`` is one optimizer
step; ``optim`` builds the optimizer and schedule; ``state`` is ``trainer_state.json``;
``checkpointing`` saves, loads and verifies ``checkpoint-N/``; ``resume`` decides what
``--resume_from_checkpoint`` continues from; ``outputs`` writes ``final/``, ``best/`` and the
results files; ``hub_pushes`` follows ``hub_strategy``; ``lock``, ``signals``, ``files`` and
``startup`` keep a run safe from a second run, SIGTERM, kills and full disks. The
:class:`~sam_hf.training.task.Task` protocol is what a model family provides.
"""
