"""Hub pushes during training, with transformers' ``hub_strategy`` meanings.

- ``end``: ``final/`` once, at the end;
- ``every_save``: also the current model at every checkpoint save (the repo root always holds
  the latest saved weights);
- ``checkpoint``: like ``every_save``, and the latest ``checkpoint-N/`` goes up as
  ``last-checkpoint/`` (replacing the previous one), so a run can be continued from the Hub
  (download it, then ``--resume_from_checkpoint PATH``);
- ``all_checkpoints``: like ``every_save``, and every ``checkpoint-N/`` goes up as itself.

Every strategy pushes ``final/`` at the end. A model push uploads a plain transformers folder
with its model card (:func:`sam_hf.hub.push.push_output`): at a save the current weights are
exported to a temporary folder for it. A push that fails is logged as one line, recorded in
``failures`` (``hub_push_failures`` of the train results) and never stops training: the next
save pushes again, except after an offline or auth failure (those do not heal within a run);
the final push is retried once after a network failure. Main process only.
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from huggingface_hub import HfApi
from huggingface_hub import constants as hub_constants

from sam_hf.hub import push as hub_push
from sam_hf.models.loading import first_line
from sam_hf.training.errors import RunError

logger = logging.getLogger("sam_hf")

#: Seconds before the one retry of a final Hub push that failed for a network reason.
HUB_RETRY_DELAY_S = 10.0
#: Where the current weights are exported for a push at a save (removed after it).
STAGING = ".tmp-hub-model"
#: transformers' name of the latest checkpoint in the repo (``hub_strategy: checkpoint``).
LAST_CHECKPOINT = "last-checkpoint"


def upload_checkpoint(checkpoint: Path, repo_id: str, path_in_repo: str, private: bool) -> None:
    """Upload the folder ``checkpoint`` as ``path_in_repo/`` of the model repo, replacing what
    was there (the token is huggingface_hub's own: ``HF_TOKEN`` or the cached login)."""
    api = HfApi()
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(
        repo_id=getattr(url, "repo_id", None) or repo_id,
        folder_path=str(checkpoint),
        path_in_repo=path_in_repo,
        repo_type="model",
        delete_patterns=["*"],
        commit_message=f"sam_hf: {checkpoint.name} as {path_in_repo}/",
    )


def _describe(what: str) -> str:
    """``the model`` (the weights at a save), else the folder: ``final/``, ``last-checkpoint/``."""
    return "the model" if what == "model" else f"{what}/"


def warn_if_offline(cfg: Any) -> None:
    """One warning at the start when pushes are asked for but the Hub is offline."""
    if cfg.push_to_hub and hub_constants.HF_HUB_OFFLINE:  # (what huggingface_hub reads)
        logger.warning(
            "push_to_hub is on but HF_HUB_OFFLINE is set: the pushes will fail. Training "
            "goes on; push the result later with `python scripts/push_to_hub.py %s "
            "--repo-id %s`.",
            cfg.output_dir,
            cfg.hub_model_id,
        )


class HubPushes:
    """The pushes of one run and their failures (see the module docstring)."""

    def __init__(self, accelerator: Accelerator, cfg: Any, family: str) -> None:
        self.accelerator, self.cfg, self.family = accelerator, cfg, family
        self.failures: list[dict] = []
        self.given_up: str | None = None  # a failure kind that retrying cannot fix

    def on_save(self, step: int, checkpoint: Path, export: Callable[[Path], None]) -> None:
        """After ``checkpoint`` was saved: push what ``hub_strategy`` asks for.
        ``export(folder)`` writes the current weights as a model folder."""
        cfg = self.cfg
        if not cfg.push_to_hub or cfg.hub_strategy == "end":
            return
        if self.accelerator.is_main_process and not self.given_up:
            staging = Path(cfg.output_dir) / STAGING
            export(staging)
            self._attempt(step, "model", functools.partial(self._push_model, staging, step))
            shutil.rmtree(staging, ignore_errors=True)
            where = {"checkpoint": LAST_CHECKPOINT, "all_checkpoints": checkpoint.name}
            if cfg.hub_strategy in where:
                path_in_repo = where[cfg.hub_strategy]
                upload = functools.partial(
                    upload_checkpoint,
                    checkpoint,
                    cfg.hub_model_id,
                    path_in_repo,
                    cfg.hub_private_repo,
                )
                self._attempt(step, path_in_repo, upload)
        self.accelerator.wait_for_everyone()

    def push_final(self, step: int) -> bool:
        """Push ``final/``; whether it went up (every rank gets True)."""
        ok = True
        if self.accelerator.is_main_process:
            final = Path(self.cfg.output_dir) / "final"
            push = functools.partial(self._push_model, final, step)
            ok = self._attempt(step, "final", push, final=True)
        self.accelerator.wait_for_everyone()
        return ok

    def _push_model(self, folder: Path, step: int) -> None:
        hub_push.push_output(
            self.cfg.output_dir,
            self.cfg.hub_model_id,
            self.cfg.hub_private_repo,
            cfg=self.cfg,
            family=self.family,
            model_subdir=folder.name,
            commit_message=f"sam_hf: {'final model' if folder.name == 'final' else 'model'} "
            f"at step {step}",
        )

    def _attempt(self, step: int, what: str, push: Callable[[], Any], final: bool = False) -> bool:
        """Run ``push``; a failure is recorded and logged, never raised (see the module)."""
        if self.given_up and not final:
            return False
        for attempt in (1, 2):
            try:
                push()
            except Exception as e:
                kind = hub_push.push_error_kind(e)
                retry = final and attempt == 1 and kind == "network"
                self._record(step, what, e, kind, final, retry)
                if retry:
                    time.sleep(HUB_RETRY_DELAY_S)
                    continue
                return False
            logger.info(
                "Pushed %s at step %d to the Hub as %s.",
                _describe(what),
                step,
                self.cfg.hub_model_id,
            )
            return True
        return False

    def _record(
        self, step: int, what: str, e: Exception, kind: str, final: bool, retry: bool
    ) -> None:
        """A failed push: one entry of ``failures`` and one warning saying what happens next."""
        text = first_line(e)[:200]
        self.failures.append({"step": step, "folder": what, "kind": kind, "error": text})
        if final:
            then = f"retrying in {HUB_RETRY_DELAY_S:.0f} s" if retry else "giving up"
        elif kind in ("offline", "auth"):
            self.given_up = kind
            then = "training goes on; no more pushes until the end of the run"
        else:
            then = "training goes on; the next save pushes again"
        logger.warning(
            "Hub push of %s at step %d failed (%s: %s); %s.",
            _describe(what),
            step,
            kind,
            hub_push.describe_push_failure(e, self.cfg.hub_model_id) or text,
            then,
        )

    def report(self, pushed: bool) -> None:
        """At the end: one warning listing the failed pushes; a RunError (the run is saved,
        only the upload is missing) when the final push itself failed."""
        cfg, failures = self.cfg, self.failures
        if failures and self.accelerator.is_main_process:
            logger.warning(
                "%d Hub push(es) failed during this run (%s); everything is saved locally in %s.",
                len(failures),
                ", ".join(sorted({f["kind"] for f in failures})),
                cfg.output_dir,
            )
        if not pushed:
            raise RunError(
                f"Training finished and {Path(cfg.output_dir) / 'final'} is saved, but pushing "
                f"it to the Hub as {cfg.hub_model_id} failed ({failures[-1]['kind']}: "
                f"{failures[-1]['error']}). Push it with `python scripts/push_to_hub.py "
                f"{cfg.output_dir} --repo-id {cfg.hub_model_id}`."
            )
