"""Nothing lost, nothing silently wrong: two runs on one folder, resumes from checkpoints of
other settings or damaged ones, leftovers of killed saves, SIGTERM, a full disk, Hub pushes
that fail mid-run, and steps voided by non-finite losses. Runs the real trainer on the toy task
(tests/toy_task.py); the subprocess tests are marked slow."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from toy_task import ToyModule, ToyTask, final_weights, launch_toy, toy_config

from sam_hf.config import ConfigError
from sam_hf.training import checkpointing
from sam_hf.training.errors import CheckpointError, DiskFullError, RunError
from sam_hf.training.files import fmt_bytes
from sam_hf.training.loop import train
from sam_hf.training.signals import TrainingInterrupted

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
        "--eval_on_start",
        "false",
        *extra,
    )


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder`` with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


def write_lock(out: Path, pid: int, host: str | None = None, start: float | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    start = time.time() if start is None else start
    (out / "run.lock").write_text(
        json.dumps(
            {
                "pid": pid,
                "host": host or socket.gethostname(),
                "start": start,
                "started": "2026-01-01T00:00:00+00:00",
            }
        )
    )


def wait_for_log(out: Path, text: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    log = out / "training.log"
    while time.time() < deadline:
        if log.is_file() and text in log.read_text():
            return
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {log}")


# ------------------------------------------------------------------------------ the lock


def test_a_folder_held_by_a_live_run_is_refused_and_left_alone(tmp_path):
    """run.lock of a live process on this host: the second run stops at once with a
    ConfigError naming pid, host and start, and writes nothing."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(out, holder.pid)
        before = snapshot(out)
        t0 = time.perf_counter()
        with pytest.raises(ConfigError) as e:
            train(cfg_for(out, "--max_steps", "2"), ToyTask())
        elapsed = time.perf_counter() - t0
    finally:
        holder.kill()
        holder.wait()
    msg = str(e.value)
    assert f"pid {holder.pid} on host {socket.gethostname()}" in msg
    assert "started 2026-01-01T00:00:00+00:00" in msg and "in use by another run" in msg
    assert elapsed < 10
    assert snapshot(out) == before  # no training.log, no config.yaml, the lock untouched


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "run"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_lock(out, dead.pid, start=time.time() - 3600)
    held: list[dict] = []

    class Task(ToyTask):
        def prepare_data(self, cfg):  # the run holds the lock while it works
            held.append(json.loads((out / "run.lock").read_text()))

    res = train(cfg_for(out, "--max_steps", "2"), Task())
    assert res["global_step"] == 2
    assert held and held[0]["pid"] == os.getpid() and held[0]["host"] == socket.gethostname()
    log = (out / "training.log").read_text()
    assert f"Took over the stale lock {out / 'run.lock'} of pid {dead.pid}" in log
    assert not (out / "run.lock").exists()  # released at the end


def test_the_lock_is_released_when_the_run_fails(tmp_path):
    out = tmp_path / "run"
    held: list[bool] = []

    class Task(ToyTask):
        def prepare_data(self, cfg):
            held.append((out / "run.lock").is_file())

    with pytest.raises(FloatingPointError):
        train(
            cfg_for(out, "--max_nonfinite_steps", "1"),
            Task(nan_ids={f"img{i}" for i in range(12)}),
        )
    assert held == [True]
    assert not (out / "run.lock").exists()
    train(cfg_for(out, "--max_steps", "1"), ToyTask())  # the folder is usable again


@pytest.mark.slow  # a training subprocess
def test_two_trainings_at_once_on_one_folder(tmp_path):
    """Run A trains in a subprocess; run B on the same folder (another seed) is refused at
    once naming A; A ends normally with all its outputs and its own config."""
    out = tmp_path / "run"
    a = launch_toy(out, "--save_strategy", "steps", "--save_steps", "1", sleep_s=0.2)
    try:
        wait_for_log(out, "step 2 ", a)
        t0 = time.perf_counter()
        with pytest.raises(ConfigError, match=rf"in use by another run: pid {a.pid} on host"):
            train(cfg_for(out, "--seed", "2", "--max_steps", "3"), ToyTask())
        assert time.perf_counter() - t0 < 10
        assert a.wait(timeout=240) == 0, a.stderr.read().decode()[-2000:]
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    results = json.loads((out / "all_results.json").read_text())
    assert results["global_step"] == 24
    assert (out / "final" / "model.safetensors").is_file() and (out / "best").is_dir()
    assert checkpointing.list_checkpoints(out)[-1].name == "checkpoint-24"
    assert "seed: 42" in (out / "config.yaml").read_text()
    assert not (out / "run.lock").exists()


# ------------------------------------------------------------------------------- resume


def test_resume_with_other_settings_is_refused_unless_allowed(tmp_path):
    out = tmp_path / "run"
    train(
        cfg_for(out, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2"), ToyTask()
    )
    before = snapshot(out)
    with pytest.raises(ConfigError) as e:
        train(
            cfg_for(
                out,
                "--max_steps",
                "6",
                "--resume_from_checkpoint",
                "true",
                "--seed",
                "1",
                "--hflip_prob",
                "0.5",
            ),
            ToyTask(),
        )
    msg = str(e.value)
    assert str(out / "checkpoint-4") in msg
    assert "seed: 42 in the checkpoint, 1 now" in msg
    assert "hflip_prob: 0.0 in the checkpoint, 0.5 now" in msg
    assert "--resume_ignore_config_mismatch true" in msg
    assert "max_steps" not in msg  # extending a run is what resume is for
    assert snapshot(out) == before  # not even config.yaml was rewritten
    res = train(
        cfg_for(
            out,
            "--max_steps",
            "6",
            "--resume_from_checkpoint",
            "true",
            "--seed",
            "1",
            "--hflip_prob",
            "0.5",
            "--resume_ignore_config_mismatch",
            "true",
        ),
        ToyTask(),
    )
    assert res["global_step"] == 6
    log = (out / "training.log").read_text()
    warning = next(line for line in log.splitlines() if "was trained with other settings" in line)
    assert "WARNING" in warning and "seed: 42 in the checkpoint, 1 now" in warning
    assert "resuming anyway" in warning


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_damaged_newest_checkpoint_is_skipped(tmp_path):
    const = ("--lr_scheduler_type", "constant")
    straight = tmp_path / "straight"
    train(cfg_for(straight, "--max_steps", "8", *const), ToyTask())
    out = tmp_path / "run"
    train(
        cfg_for(out, "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2", *const),
        ToyTask(),
    )
    _truncate(out / "checkpoint-6" / "model.safetensors")
    res = train(
        cfg_for(out, "--max_steps", "8", "--resume_from_checkpoint", "true", *const), ToyTask()
    )
    assert res["global_step"] == 8
    log = (out / "training.log").read_text()
    assert "skipping damaged checkpoint checkpoint-6" in log
    assert f"{out / 'checkpoint-6' / 'model.safetensors'} is truncated" in log
    assert f"Resumed from {out / 'checkpoint-4'}" in log
    assert (out / "checkpoint-6.damaged").is_dir()  # kept, out of the rotation
    assert_same_weights(final_weights(straight), final_weights(out))


def test_resume_path_to_a_damaged_checkpoint_names_the_file_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    train(
        cfg_for(out, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2"), ToyTask()
    )
    bad = out / "checkpoint-4"
    _truncate(bad / "optimizer.bin")
    before = snapshot(out)
    with pytest.raises(CheckpointError) as e:
        train(cfg_for(out, "--max_steps", "6", "--resume_from_checkpoint", str(bad)), ToyTask())
    msg = str(e.value)
    assert "\n" not in msg
    assert f"{bad / 'optimizer.bin'} is truncated" in msg
    assert str(out / "checkpoint-2") in msg  # where to resume from instead
    assert snapshot(out) == before


def test_leftovers_of_killed_saves_are_cleaned_up(tmp_path):
    out = tmp_path / "run"
    train(
        cfg_for(out, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2"), ToyTask()
    )
    (out / ".tmp-checkpoint-6").mkdir()
    (out / ".tmp-checkpoint-6" / "model.safetensors").write_bytes(b"half")
    (out / ".old-checkpoint-2").mkdir()  # checkpoint-2 exists: an old copy of it
    (out / ".tmp-final").mkdir()
    os.replace(out / "best", out / ".old-best")  # killed between the two renames of an export
    (out / ".trainer_state.json.tmp").write_text("{")
    res = train(cfg_for(out, "--max_steps", "6", "--resume_from_checkpoint", "true"), ToyTask())
    assert res["global_step"] == 6
    hidden = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert hidden == []
    assert (out / "best" / "model.safetensors").is_file()
    log = (out / "training.log").read_text()
    assert f"Leftover of an interrupted save: removed {out / '.tmp-checkpoint-6'}" in log
    assert f"restored {out / 'best'} from .old-best" in log


# ------------------------------------------------------------------------------ SIGTERM


def test_sigterm_saves_a_checkpoint_and_the_resume_is_exact(tmp_path, monkeypatch):
    """In-process: SIGTERM arrives during the 3rd training forward; the run saves where it is,
    raises TrainingInterrupted (exit code 143), restores the previous handler, and a resume
    ends with the weights of an uninterrupted run."""
    straight = tmp_path / "straight"
    train(cfg_for(straight, "--max_steps", "9"), ToyTask())

    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))  # pytest survives
    forward = ToyModule.forward
    calls = {"n": 0}

    def signalling_forward(self, batch):
        if self.training:
            calls["n"] += 1
            if calls["n"] == 3:
                os.kill(os.getpid(), signal.SIGTERM)
        return forward(self, batch)

    out = tmp_path / "run"
    try:
        mine = signal.getsignal(signal.SIGTERM)
        monkeypatch.setattr(ToyModule, "forward", signalling_forward)
        with pytest.raises(TrainingInterrupted) as e:
            train(cfg_for(out, "--max_steps", "9"), ToyTask())
        assert signal.getsignal(signal.SIGTERM) is mine  # restored
        monkeypatch.setattr(ToyModule, "forward", forward)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == []  # the trainer's handler took it
    assert e.value.exit_code == 143
    assert e.value.step == 4  # the flag is acted on after the next optimizer step
    assert e.value.checkpoint == out / "checkpoint-4"
    assert "Stopped by SIGTERM at step 4" in (out / "training.log").read_text()
    assert not (out / "final").exists() and not (out / "run.lock").exists()
    res = train(cfg_for(out, "--max_steps", "9", "--resume_from_checkpoint", "true"), ToyTask())
    assert res["global_step"] == 9
    assert_same_weights(final_weights(straight), final_weights(out))


@pytest.mark.slow  # training subprocesses
def test_sigterm_to_a_training_process_then_resume_is_bit_exact(tmp_path):
    """SIGTERM to a real training process between checkpoints (only epoch ends save): it
    saves, prints one line and exits 143; --resume_from_checkpoint true ends bit-identical to a run that was
    never interrupted."""
    ref = launch_toy(tmp_path / "ref")
    out = tmp_path / "run"
    proc = launch_toy(out, sleep_s=0.25)
    try:
        wait_for_log(out, "step 8 ", proc)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
        err = proc.stderr.read().decode()
        assert rc == 143, err[-2000:]
        line = err.strip().splitlines()[-1]
        assert (
            line.startswith("Stopped by SIGTERM at step ")
            and "--resume_from_checkpoint true" in line
        )
        step = int(line.split("at step ")[1].split(":")[0])
        assert 8 <= step < 12  # not an epoch end (6, 12, ...): the save came from the signal
        assert (out / f"checkpoint-{step}").is_dir()
        assert not (out / "final").exists()
        assert ref.wait(timeout=240) == 0, ref.stderr.read().decode()[-2000:]
    finally:
        for p in (proc, ref):
            if p.poll() is None:
                p.kill()
                p.wait()
    resumed = launch_toy(out, "--resume_from_checkpoint", "true")
    assert resumed.wait(timeout=240) == 0, resumed.stderr.read().decode()[-2000:]
    assert_same_weights(final_weights(tmp_path / "ref"), final_weights(out))


# ---------------------------------------------------------------------------- disk full


def test_disk_full_while_saving_a_checkpoint_says_where_and_how_much(tmp_path, monkeypatch):
    from accelerate import Accelerator

    real_save = Accelerator.save_state
    calls = {"n": 0}

    def failing_save(self, output_dir=None, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint: half a file, then torch's error
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "optimizer.bin").write_bytes(b"0" * 1000)
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed "
                "writing file data/3: file write failed"
            )
        return real_save(self, output_dir, **kw)

    monkeypatch.setattr(Accelerator, "save_state", failing_save)
    out = tmp_path / "run"
    with pytest.raises(DiskFullError) as e:
        train(
            cfg_for(out, "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2"),
            ToyTask(),
        )
    msg = str(e.value)
    prev = out / "checkpoint-2"
    prev_size = sum(p.stat().st_size for p in prev.rglob("*") if p.is_file())
    assert f"Out of disk space writing checkpoint-4 to {out / 'checkpoint-4'}" in msg
    assert " free there" in msg
    assert f"the previous one ({prev}) takes {fmt_bytes(prev_size)}" in msg
    assert "--resume_from_checkpoint true" in msg and "\n" not in msg
    assert not (out / ".tmp-checkpoint-4").exists()  # the partial save is gone
    assert checkpointing.verify_checkpoint(prev) is None
    assert not (out / "run.lock").exists()


def test_disk_full_while_exporting_best(tmp_path, monkeypatch):
    def full(self, module, processor, out_dir, cfg):
        raise OSError(errno.ENOSPC, "No space left on device", str(out_dir / "model.safetensors"))

    monkeypatch.setattr(ToyTask, "save_pretrained", full)
    out = tmp_path / "run"
    with pytest.raises(DiskFullError) as e:
        train(cfg_for(out, "--max_steps", "2"), ToyTask())
    assert f"writing the best/ model to {out / 'best'}: " in str(e.value)
    assert " free there, 0 B had been written when it failed" in str(e.value)
    assert not (out / ".tmp-best").exists()


# ---------------------------------------------------------------------------------- Hub


class HubToyTask(ToyTask):
    """The toy task saved like a SAM2 model folder (config.json), so push_output accepts it."""

    def save_pretrained(self, module, processor, out_dir, cfg):
        super().save_pretrained(module, processor, out_dir, cfg)
        (out_dir / "config.json").write_text(json.dumps({"model_type": "sam2"}))


def test_offline_hub_pushes_never_stop_training(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "run"
    cfg = cfg_for(
        out,
        "--max_steps",
        "6",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "2",
        "--push_to_hub",
        "true",
        "--hub_model_id",
        "me/toy",
        "--hub_strategy",
        "checkpoint",
    )
    with pytest.raises(RunError) as e:
        train(cfg, HubToyTask())
    assert "Training finished" in str(e.value) and "offline" in str(e.value)
    assert f"python scripts/push_to_hub.py {out} --repo-id me/toy" in str(e.value)
    results = json.loads((out / "all_results.json").read_text())
    assert results["global_step"] == 6
    failures = results["hub_push_failures"]
    # the model push of the first save fails offline: no more pushes until the final one
    assert [(f["step"], f["folder"], f["kind"]) for f in failures] == [
        (2, "model", "offline"),
        (6, "final", "offline"),
    ]
    assert json.loads((out / "train_results.json").read_text())["hub_push_failures"] == failures
    assert (out / "final" / "model.safetensors").is_file()
    assert not (out / ".tmp-hub-model").exists()  # the export for the push is removed
    log = (out / "training.log").read_text()
    assert "push_to_hub is on but HF_HUB_OFFLINE is set" in log
    assert "Hub push of the model at step 2 failed (offline: " in log


def test_a_failed_checkpoint_push_is_retried_at_the_next_checkpoint(tmp_path, monkeypatch):
    attempts: list[str] = []
    uploads: list[tuple[str, str]] = []

    def flaky_push(output_dir, repo_id, private=True, **kw):
        attempts.append(kw["model_subdir"])
        if len(attempts) == 1:
            raise ConnectionError("Connection reset by peer")

    def upload(checkpoint, repo_id, path_in_repo, private):
        uploads.append((checkpoint.name, path_in_repo))

    monkeypatch.setattr("sam_hf.hub.push.push_output", flaky_push)
    monkeypatch.setattr("sam_hf.training.hub_pushes.upload_checkpoint", upload)
    cfg = cfg_for(
        tmp_path / "run",
        "--max_steps",
        "4",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "2",
        "--push_to_hub",
        "true",
        "--hub_model_id",
        "me/toy",
        "--hub_strategy",
        "checkpoint",
    )
    res = train(cfg, HubToyTask())
    # a network failure does not stop the other pushes: the checkpoint still goes up, and
    # the next save pushes the model again
    assert attempts == [".tmp-hub-model", ".tmp-hub-model", "final"]
    assert uploads == [("checkpoint-2", "last-checkpoint"), ("checkpoint-4", "last-checkpoint")]
    assert res["global_step"] == 4
    assert res["hub_push_failures"] == [
        {"step": 2, "folder": "model", "kind": "network", "error": "Connection reset by peer"}
    ]


# ------------------------------------------------------------------------ voided steps


def test_voided_steps_are_made_up_under_max_steps(tmp_path):
    """img3 poisons one window per epoch. max_steps promises optimizer steps: 12 happen (2
    epochs would give 10). Under num_train_epochs the epochs are the promise (tests/test_trainer.py)."""
    out = tmp_path / "run"
    res = train(cfg_for(out, "--max_steps", "12"), ToyTask(nan_ids={"img3"}))
    assert res["global_step"] == 12
    assert res["train_nonfinite_steps"] >= 2
    assert (
        "voided by non-finite losses and made up: 12 steps ran"
        in (out / "training.log").read_text()
    )
