"""The shared training loop: exact resume, accumulation, the non-finite guard, early stopping,
checkpoint hygiene, and the outputs in transformers' layout (checkpoint-N/, trainer_state.json,
eval_results.json / all_results.json, final/ and best/ with a model card). Uses a small conv
net (tests/toy_task.py) so each run takes seconds."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from toy_task import ToyTask, final_weights, launch_toy, toy_config

from sam_hf.config import ConfigError
from sam_hf.training import checkpointing
from sam_hf.training.loop import train
from sam_hf.training.resume import find_resume_checkpoint
from sam_hf.training.startup import check_output_dir

HERE = Path(__file__).resolve().parent


def cfg_for(out: Path, *extra: str):
    return toy_config(
        out,
        "--learning_rate",
        "0.05",
        "--lr_scheduler_type",
        "cosine",
        "--warmup_steps",
        "2",
        *extra,
    )


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_training_improves_and_writes_results(tmp_path):
    out = tmp_path / "run"
    res = train(cfg_for(out), ToyTask())
    assert res["eval_mean_iou"] > res["initial_eval_mean_iou"]
    # transformers' results files: flat keys; all_results = eval_results + train_results
    evals = json.loads((out / "eval_results.json").read_text())
    trains = json.loads((out / "train_results.json").read_text())
    assert json.loads((out / "all_results.json").read_text()) == {**evals, **trains} == res
    assert evals["eval_mean_iou"] == pytest.approx(res["eval_mean_iou"])
    assert evals["epoch"] == 2.0 and evals["metric_for_best_model"] == "eval_mean_iou"
    assert evals["best_global_step"] == 12 and evals["best_eval_mean_iou"] == res["eval_mean_iou"]
    assert trains["global_step"] == 12 and trains["train_samples"] == 12
    assert trains["train_loss"] > 0 and trains["train_runtime"] > 0
    assert trains["train_samples_per_second"] > 0 and trains["train_steps_per_second"] > 0
    log = (out / "training.log").read_text()
    assert log.count("step ") >= 6
    # the run ends with the before/after table the README quotes
    row = log.split("Before and after fine-tuning:")[1].splitlines()[2].split()
    before, after = res["initial_eval_mean_iou"], res["eval_mean_iou"]
    assert row == ["mean_iou", f"{before:.4f}", f"{after:.4f}", f"{after - before:+.4f}"]
    # every eval image scored exactly once
    assert res["eval_image_ids"] == sorted(f"img{i}" for i in range(5))
    # final/ and best/: model, config, their own results and a model card, without any push
    for folder in ("final", "best"):
        names = {p.name for p in (out / folder).iterdir()}
        assert names == {
            "model.safetensors",
            "training_config.yaml",
            "eval_results.json",
            "README.md",
        }
        assert (out / folder / "README.md").read_text().startswith("---\n")
    assert json.loads((out / "final" / "eval_results.json").read_text())["eval_mean_iou"] == after
    card = (out / "final" / "README.md").read_text()
    assert f"| mean_iou | {before:.4f} | {after:.4f} | {after - before:+.4f} |" in card
    assert "Best mean_iou during training" in card


def test_trainer_state_has_transformers_schema(tmp_path):
    """trainer_state.json in output_dir and in each checkpoint: transformers' fields, and a
    log_history of training entries (loss, learning_rate, grad_norm, loss terms) and
    evaluation entries (eval_<metric>) in the order they happened."""
    out = tmp_path / "run"
    train(cfg_for(out, "--logging_steps", "2"), ToyTask())
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 12 and state["epoch"] == 2.0
    assert state["max_steps"] == 12 and state["num_train_epochs"] == 2
    assert state["logging_steps"] == 2 and state["eval_steps"] is None
    assert state["save_steps"] is None and state["train_batch_size"] == 2
    assert state["best_global_step"] == 12 and state["best_metric"] > 0
    assert state["best_model_checkpoint"] == str(out / "checkpoint-12")
    history = state["log_history"]
    assert [e["step"] for e in history] == [0, 1, 2, 4, 6, 6, 8, 10, 12, 12, 12]
    assert set(history[0]) == {
        "step",
        "epoch",
        "eval_mean_iou",
        "eval_num_images",
        "eval_image_ids",
    }
    assert set(history[1]) == {"step", "epoch", "loss", "learning_rate", "grad_norm", "loss_bce"}
    assert history[2]["epoch"] == pytest.approx(2 / 6, abs=1e-4)  # fractional epochs
    assert "eval_mean_iou" in history[5] and history[5]["epoch"] == 1.0
    assert history[-1]["train_loss"] > 0 and "train_runtime" in history[-1]  # the summary
    inner = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert inner["global_step"] == 6 and inner["log_history"] == history[:6]


def test_resume_mid_epoch_equals_straight_run(tmp_path):
    """N steps straight == k steps, a stop, and N-k resumed steps (same weights, bit for bit).

    The stop is a run whose max_steps ends at k under a constant schedule (so the schedule of
    the two parts equals the straight one); the SIGKILL test below covers a real crash.
    """
    straight = train(
        cfg_for(tmp_path / "a", "--max_steps", "9", "--lr_scheduler_type", "constant"), ToyTask()
    )
    train(
        cfg_for(
            tmp_path / "b",
            "--max_steps",
            "4",
            "--save_strategy",
            "steps",
            "--save_steps",
            "4",
            "--lr_scheduler_type",
            "constant",
        ),
        ToyTask(),
    )
    resumed = train(
        cfg_for(
            tmp_path / "b",
            "--max_steps",
            "9",
            "--resume_from_checkpoint",
            "true",
            "--lr_scheduler_type",
            "constant",
        ),
        ToyTask(),
    )
    assert resumed["global_step"] == straight["global_step"] == 9
    assert_same_weights(final_weights(tmp_path / "a"), final_weights(tmp_path / "b"))
    # the resumed run's trainer state (log_history restored from checkpoint-4) equals the
    # straight run's, but for the end-of-training summary (timings of each process's part)
    a, b = (json.loads((tmp_path / r / "trainer_state.json").read_text()) for r in "ab")
    for s in (a, b):
        s["log_history"] = [e for e in s["log_history"] if "train_runtime" not in e]
        s["best_model_checkpoint"] = Path(s["best_model_checkpoint"]).name
    assert a == b


def test_gradient_accumulation_matches_bigger_batch(tmp_path):
    big = cfg_for(
        tmp_path / "big",
        "--per_device_train_batch_size",
        "4",
        "--max_steps",
        "3",
        "--max_grad_norm",
        "0",
    )
    acc = cfg_for(
        tmp_path / "acc",
        "--per_device_train_batch_size",
        "2",
        "--gradient_accumulation_steps",
        "2",
        "--max_steps",
        "3",
        "--max_grad_norm",
        "0",
    )
    train(big, ToyTask())
    train(acc, ToyTask())
    a, b = final_weights(tmp_path / "big"), final_weights(tmp_path / "acc")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_nonfinite_steps_are_skipped_then_stop_with_image_ids(tmp_path):
    # img3 is in one batch per epoch: that step is skipped, counted, and training goes on.
    res = train(cfg_for(tmp_path / "one", "--eval_on_start", "false"), ToyTask(nan_ids={"img3"}))
    assert res["train_nonfinite_steps"] == 2
    assert res["global_step"] == 2 * 6 - 2
    assert torch.isfinite(
        torch.cat([v.flatten() for v in final_weights(tmp_path / "one").values()])
    ).all()
    log = (tmp_path / "one" / "training.log").read_text()
    assert "Non-finite loss" in log and "img3" in log
    # every image poisoned: stops after max_nonfinite_steps in a row, naming images and a hint
    every = {f"img{i}" for i in range(12)}
    with pytest.raises(
        FloatingPointError, match=r"3 non-finite losses in a row.*img.*bf16 instead of fp16"
    ):
        train(cfg_for(tmp_path / "all", "--max_nonfinite_steps", "3"), ToyTask(nan_ids=every))


def test_early_stopping_and_checkpoint_limit(tmp_path):
    out = tmp_path / "es"
    # learning rate so small the metric cannot improve after the first eval
    cfg = cfg_for(
        out,
        "--num_train_epochs",
        "10",
        "--learning_rate",
        "1e-12",
        "--early_stopping_patience",
        "2",
        "--save_total_limit",
        "2",
        "--greater_is_better",
        "true",
    )
    res = train(cfg, ToyTask())
    # best at epoch 1, then 2 epochs without improvement -> stop after epoch 3
    assert res["global_step"] == 3 * 6
    # save_total_limit 2 keeps the newest and never deletes the best (checkpoint-6)
    names = [p.name for p in checkpointing.list_checkpoints(out)]
    assert names == ["checkpoint-6", "checkpoint-18"]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(out / "checkpoint-6")
    assert state["best_global_step"] == 6
    assert not (out / "checkpoints").exists() and not (out / "latest").exists()


def test_plateau_schedule_lowers_the_lr_when_the_metric_stalls(tmp_path):
    """``lr_scheduler_type: reduce_lr_on_plateau`` steps on the evaluation metric (never per optimizer step, which
    crashed at the first step when Accelerate wrapped it) and multiplies the LR by its factor
    once the metric stops improving for more than ``patience`` evaluations."""
    out = tmp_path / "plateau"
    # an LR so small the metric cannot move: eval 1 sets the best, eval 2 does not improve
    cfg = cfg_for(out, "--num_train_epochs", "3", "--learning_rate", "1e-12", "--warmup_steps", "0")
    cfg.lr_scheduler_type = "reduce_lr_on_plateau"
    cfg.lr_scheduler_kwargs = {"patience": 0, "factor": 0.5}
    res = train(cfg, ToyTask())
    assert res["global_step"] == 3 * 6
    lrs = [
        float(line.split("train/lr=")[1].split()[0])
        for line in (out / "training.log").read_text().splitlines()
        if "train/lr=" in line
    ]
    assert len(lrs) == 18
    assert lrs[:12] == [1e-12] * 12  # epochs 1 and 2: the full LR (eval 1 set the best)
    assert lrs[12:] == [pytest.approx(0.5e-12, rel=1e-3)] * 6  # eval 2 did not improve


def test_guide_sam3_accumulation_runs_every_epoch_on_a_split_of_5(tmp_path):
    """Batch 1 x accumulation 4 over 5 images: each epoch is 2 optimizer steps (4 micro-batches
    and the last, shorter window that Accelerate also steps on), so 30 epochs are 60 steps,
    30 evaluations and a final checkpoint; counting 1 step per epoch stopped after 15 epochs."""
    out = tmp_path / "guide"
    cfg = cfg_for(
        out,
        "--num_train_epochs",
        "30",
        "--per_device_train_batch_size",
        "1",
        "--gradient_accumulation_steps",
        "4",
        "--eval_on_start",
        "false",
    )
    res = train(cfg, ToyTask(n_train=5))
    assert res["global_step"] == 60
    state = json.loads((out / "checkpoint-60" / "trainer_state.json").read_text())
    evals = [e for e in state["log_history"] if "eval_mean_iou" in e]
    assert state["epoch"] == 30 and len(evals) == 30


def test_resume_ignores_partial_checkpoint(tmp_path):
    out = tmp_path / "p"
    train(
        cfg_for(out, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2"), ToyTask()
    )
    # a crash while writing checkpoint-6 leaves only a temporary folder behind
    (out / ".tmp-checkpoint-6").mkdir()
    (out / "checkpoint-8").mkdir()  # no completion marker: not a checkpoint
    assert find_resume_checkpoint(out, "true").name == "checkpoint-4"
    with pytest.raises(FileNotFoundError, match="not a complete sam_hf checkpoint"):
        find_resume_checkpoint(out, str(out / "checkpoint-8"))


class ScriptedTask(ToyTask):
    """The toy task whose evaluations score ``mean_iou`` as scripted, in order."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.scores = iter(scores)

    def compute_metrics(self, records):
        return {**super().compute_metrics(records), "mean_iou": next(self.scores)}


def test_load_best_model_at_end_puts_the_best_weights_in_final(tmp_path):
    """Evaluations score 0.1 (before), 0.9 (step 6), 0.5 (step 12): with
    load_best_model_at_end, final/ holds the weights of step 6 and reports their metrics."""
    out = tmp_path / "run"
    cfg = cfg_for(out, "--load_best_model_at_end", "true")
    res = train(cfg, ScriptedTask([0.1, 0.9, 0.5]))
    assert res["global_step"] == 12 and res["best_global_step"] == 6
    assert res["eval_mean_iou"] == res["best_eval_mean_iou"] == 0.9
    assert res["initial_eval_mean_iou"] == 0.1
    final, best = final_weights(out), load_file(str(out / "best" / "model.safetensors"))
    assert_same_weights(final, best)
    # those are the weights of checkpoint-6, not of the last step (checkpoint-12)
    for step, same in ((6, True), (12, False)):
        saved = load_file(str(out / f"checkpoint-{step}" / "model.safetensors"))
        saved = {k.removeprefix("model."): v for k, v in saved.items()}
        assert all(torch.equal(final[k], saved[k]) for k in final) is same
    assert json.loads((out / "final" / "eval_results.json").read_text())["eval_mean_iou"] == 0.9
    assert (
        "load_best_model_at_end: final/ holds the best evaluated weights (step 6"
        in (out / "training.log").read_text()
    )


def test_unwritable_output_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="not writable.*choose another --output_dir"):
        check_output_dir(blocker / "run")


def test_batch_larger_than_dataset(tmp_path):
    with pytest.raises(ConfigError, match="batch_size 20 is larger than the training split"):
        train(cfg_for(tmp_path / "x", "--per_device_train_batch_size", "20"), ToyTask())


@pytest.mark.slow  # training subprocesses killed and restarted
def test_sigkill_at_random_points_then_resume_is_bit_exact(tmp_path):
    ref = launch_toy(tmp_path / "ref", "--save_strategy", "steps", "--save_steps", "1")
    assert ref.wait(timeout=240) == 0, ref.stderr.read().decode()[-2000:]
    out = tmp_path / "killed"
    rng = torch.Generator().manual_seed(0)
    kills = 0
    for _ in range(3):
        proc = launch_toy(
            out, "--save_strategy", "steps", "--save_steps", "1", "--resume_from_checkpoint", "true"
        )
        # wait until this attempt has made progress past a random number of new checkpoints
        start = len(checkpointing.list_checkpoints(out))
        target = int(torch.randint(1, 4, (1,), generator=rng))
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            latest = checkpointing.list_checkpoints(out)
            step = int(latest[-1].name.split("-")[1]) if latest else 0
            if step >= start + target:
                time.sleep(
                    float(torch.rand(1, generator=rng)) * 0.3
                )  # land anywhere, even mid-save
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.02)
        proc.wait(timeout=60)
    final = launch_toy(
        out, "--save_strategy", "steps", "--save_steps", "1", "--resume_from_checkpoint", "true"
    )
    assert final.wait(timeout=240) == 0, final.stderr.read().decode()[-2000:]
    assert kills >= 1
    assert_same_weights(final_weights(tmp_path / "ref"), final_weights(out))


def _launch_recipe(out: Path, data: Path, *extra: str) -> subprocess.Popen:
    """The SAM2 recipe itself (tiny model, 64 px synthetic orchard) as a training process."""
    root = HERE.parent
    args = [
        "--config",
        str(root / "recipes" / "sam2_demo.yaml"),
        "--model_name_or_path",
        "sam2-tiny",
        "--resolution",
        "64",
        "--dataset_path",
        str(data),
        "--synthetic_num_images",
        "10",
        "--synthetic_image_size",
        "[64, 64]",
        "--output_dir",
        str(out),
        "--max_steps",
        "10",
        "--save_strategy",
        "steps",
        "--save_steps",
        "1",
        "--per_device_train_batch_size",
        "2",
        "--eval_on_start",
        "false",
        "--max_objects_per_image",
        "3",
        "--logging_steps",
        "1",
        *extra,
    ]
    return subprocess.Popen(
        [sys.executable, str(root / "recipes" / "sam2_mineapple.py"), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow  # training subprocesses killed and restarted
def test_sam2_recipe_killed_and_resumed_is_bit_exact(tmp_path):
    """SIGKILL the real recipe mid-run (twice), resume with --resume_from_checkpoint true: final weights equal
    an uninterrupted run's, bit for bit."""
    data = tmp_path / "data"
    ref = _launch_recipe(tmp_path / "ref", data)
    assert ref.wait(timeout=400) == 0, ref.stderr.read().decode()[-2000:]
    out = tmp_path / "killed"
    kills = 0
    for target in (3, 6):
        proc = _launch_recipe(out, data, "--resume_from_checkpoint", "true")
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            latest = checkpointing.list_checkpoints(out)
            if latest and int(latest[-1].name.split("-")[1]) >= target:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.02)
        proc.wait(timeout=60)
    final = _launch_recipe(out, data, "--resume_from_checkpoint", "true")
    assert final.wait(timeout=400) == 0, final.stderr.read().decode()[-2000:]
    assert kills == 2
    a = load_file(str(tmp_path / "ref" / "final" / "model.safetensors"))
    b = load_file(str(out / "final" / "model.safetensors"))
    assert_same_weights(a, b)


def test_steps_strategy_also_saves_the_last_step(tmp_path):
    """As transformers' Trainer: under save_strategy steps the run ends with a checkpoint of
    its last step, so it can be resumed or extended from where it stopped."""
    out = tmp_path / "run"
    train(
        cfg_for(out, "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "2"),
        ToyTask(),
    )
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
