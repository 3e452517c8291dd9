"""Every shell command of README.md, run exactly as printed (slow).

README.md is the source: it is read when the tests are collected, every command of its
```bash blocks and every complete command quoted in backticks in its prose is taken from it,
and each must match exactly one entry of ``CASES`` below, which says how to run or check it:
what its placeholders (``DIR``, ``FILE.json``, ``OUT``...) become and which ``[optional ...]``
parts are kept. A README command that no entry knows fails ``test_readme_command``, so a README
edit has to come with its check here.

The commands run in README order in one throw-away copy of the working tree (tracked and
untracked-but-not-ignored files, committed into a fresh git repository), so that later
commands find what earlier ones wrote (``evaluate.py --model outputs/sam2_demo/final`` after
``make demo``), exactly as for a user who follows the README, and so that ``data/`` and
``outputs/`` never touch the real checkout. The copy gets its own virtualenv (which sees the
packages of the one running the tests): ``make demo`` installs sam_hf with pip there, never
into the environment running the tests. Offline: ``HF_HUB_OFFLINE=1``, an empty ``HF_HOME``,
no Hub token.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from test_convert_coco import POLY, coco_doc, saco_doc, write_coco, write_jsonpoly
from test_converters import write_split

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# The first word of a complete command (prose spans such as `--use_lora true` are flags, and
# `Sam2Model.from_pretrained(dir)` is Python, not a shell command).
COMMAND_WORDS = {
    "accelerate",
    "bash",
    "git",
    "hf",
    "huggingface-cli",
    "make",
    "pip",
    "python",
    "pytest",
    "ruff",
    "sbatch",
    "sh",
}
# ...but a span naming only the tool ("one `accelerate launch` per node") or with an ellipsis
# (`python recipes/...`) is not a complete command
TOOL_NAMES = {"accelerate launch", "python", "pip", "make", "sbatch", "git"}
TRACEBACK = "Traceback (most recent call last)"


# ---------------------------------------------------------------------------------------------
# Reading the commands out of README.md
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadmeCommand:
    text: str  # whitespace-normalised, comment stripped
    line: int  # README line where it starts
    where: str  # "bash block" or "prose"


def strip_comment(line: str) -> str:
    """``line`` without a shell comment (a ``#`` at the start or after a blank, not quoted)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def readme_commands(text: str) -> list[ReadmeCommand]:
    """Every command of the ```bash blocks and every complete command in backticks in the prose,
    in README order; a command printed twice is listed once (where it first appears)."""
    found: list[ReadmeCommand] = []
    prose: list[tuple[int, str]] = []  # (README line, text) outside code blocks
    fence: str | None = None  # language of the open code block
    pending, pending_line = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        opening = re.match(r"\s*```\s*(\S*)", line)
        if opening:
            fence = None if fence is not None else opening.group(1).lower()
            prose.append((number, ""))
            continue
        if fence is None:
            prose.append((number, line))
            continue
        prose.append((number, ""))
        if fence not in ("bash", "sh", "shell", "console"):
            continue
        code = strip_comment(line).rstrip()
        if not pending:
            pending_line = number
        if code.endswith("\\"):  # continuation line
            pending += code[:-1] + " "
            continue
        command = " ".join((pending + code).split())
        pending = ""
        if command:
            found.append(ReadmeCommand(command, pending_line, "bash block"))
    # Inline `...` spans of the prose; a span may continue on the next line of its paragraph.
    joined = "\n".join(t for _, t in prose)
    starts = [0]
    for _, t in prose:
        starts.append(starts[-1] + len(t) + 1)
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", joined):
        words = m.group(1).split()
        complete = " ".join(words) not in TOOL_NAMES and "..." not in m.group(1)
        if words and words[0] in COMMAND_WORDS and complete:
            index = max(i for i, s in enumerate(starts) if s <= m.start())
            found.append(ReadmeCommand(" ".join(words), prose[index][0], "prose"))
    found.sort(key=lambda c: c.line)
    seen: set[str] = set()
    unique = []
    for c in found:
        if c.text not in seen:
            seen.add(c.text)
            unique.append(c)
    return unique


# ---------------------------------------------------------------------------------------------
# The table: how each README command is run or checked
# ---------------------------------------------------------------------------------------------


class KnownBug(AssertionError):
    """A README command fails here in a way the README does not document (the case's xfail)."""


@dataclass(frozen=True)
class Case:
    """How to run one README command.

    ``action``:
      run           run it; exit 0, ``creates`` exist afterwards
      fails_here    run it; it cannot succeed here (offline, no GPU): it must exit non-zero
                    within ``max_seconds`` with ``message`` in its output and no traceback
      demo_target   not run again: ``make demo`` runs this very command (checked with
                    ``make -n demo``) and what it writes is checked
      skip          not run: ``reason``
    """

    pattern: str  # see pattern(): literal README text, <name> = any one word
    action: str
    fill: dict[str, Any] = field(default_factory=dict)  # placeholder -> value (tuple: in order)
    optional: str = "keep"  # "[...]" parts: "keep" their content, or "drop" them
    creates: tuple[str, ...] = ()  # paths relative to the copy; "{out}" = the --out value
    results_flag: str = ""  # flag naming where results go: must lie under outputs/
    message: str = ""  # regex the output of a failing command must contain
    max_seconds: float = 180.0  # how quickly a failing command must give up (loaded CPU)
    known_bug: str = ""  # xfail(strict) reason: today it fails with a raw traceback
    reason: str = ""  # why it is skipped
    skip_on_gpu: bool = False  # does something else (long) where there is a CUDA GPU
    timeout: int = 1800


def pattern(template: str) -> re.Pattern[str]:
    """``template`` is README text; ``<name>`` matches one word; ``accelerate launch`` may be
    followed by ``-q``/``--quiet`` (the launcher flag that drops accelerate's own traceback)."""
    parts = re.split(r"<(\w+)>", template)
    regex = ""
    for i, part in enumerate(parts):
        regex += rf"(?P<{part}>\S+)" if i % 2 else re.escape(part)
    regex = regex.replace(
        re.escape("accelerate launch "), r"accelerate\ launch\ (?:(?:-q|--quiet)\ )?"
    )
    return re.compile(regex)


GUIDE_OFFLINE = dict(
    action="fails_here",
    # offline, the guide's checkpoint cannot be fetched: one line naming it and what to do
    message=r"Config error: model_name_or_path 'facebook/sam2\.1-hiera-large': not found locally",
)
BENCHMARK = (
    "benchmark: a timing measurement of minutes; `python benchmarks/run_all.py` runs them all "
    "(about 10 minutes on 2 CPU cores), beyond the budget of this test"
)
PIP = "installs packages into the environment (make demo's own pip install -e . does run here)"

CASES: list[Case] = [
    # --- Quick start ---
    Case(
        "make demo",
        "run",
        creates=(
            "outputs/sam2_demo/eval_results.json",
            "outputs/sam2_demo/config.yaml",
            "outputs/sam2_demo/training.log",
            "outputs/sam2_demo/final/config.json",
            "outputs/sam2_demo/forgetting_results.json",
        ),
    ),
    Case(
        "python scripts/demo_forgetting.py outputs/sam2_demo",
        "run",
        creates=("outputs/sam2_demo/forgetting_results.json",),
    ),
    Case(
        "make demo-sam3",
        "skip",
        reason="the SAM3 demo: 1,500 steps, 3.5-9 minutes, then the forgetting table; the "
        "README's `accelerate launch ... sam3_demo.yaml` command runs the same fine-tune here",
    ),
    Case(
        "python benchmarks/demo_spread.py --family <family> --seeds 0 1 2",
        "skip",
        reason="runs the demo once per seed (SAM2: 3 x 1.5-5 min, SAM3: 3 x 3.5-9 min), beyond "
        "the budget of this test",
    ),
    Case(
        "python benchmarks/demo_spread.py --family <family> --seeds 0 1 2 --forgetting",
        "skip",
        reason="three demos (3 x 2-9 min) and their forgetting tables; the table code runs in "
        "tests/test_benchmarks_smoke.py",
    ),
    Case(
        "python benchmarks/demo_spread.py --family sam3 --seeds 0 1 2 --forgetting -- "
        "--replay_dataset_path data/replay_shapes_112 --replay_fraction 0.25 "
        "--replay_synthetic_kind shapes",
        "skip",
        reason="three SAM3 demos with replay (3 x 3.5-9 min); replay itself runs in "
        "tests/test_replay.py and for every family in tests/test_config_choices.py",
    ),
    Case(
        "make test",
        "skip",
        reason="the whole fast suite (what CI runs), minutes by itself; run by CI, not from here",
    ),
    Case(
        "accelerate launch recipes/sam2_mineapple.py --config recipes/sam2_demo.yaml "
        "--output_dir outputs/sam2_demo",
        "demo_target",
        creates=("outputs/sam2_demo/eval_results.json", "outputs/sam2_demo/final/config.json"),
    ),
    Case("pip install -e .", "skip", reason=PIP),
    Case(
        'python -m pytest -q -m "not slow and not official"',
        "skip",
        reason="the fast suite, what `make test` runs: minutes; run by CI, not from here",
    ),
    # --- With your own environment ---
    Case("accelerate config", "skip", reason="interactive questionnaire"),
    Case(
        "python scripts/prepare_mineapple.py --source /data/minneapple --out data/mineapple",
        "run",
        fill={"/data/minneapple": "{minneapple}"},
        creates=("data/mineapple/dataset_dict.json", "data/mineapple/README.md"),
    ),
    Case("accelerate launch recipes/sam2_mineapple.py", **GUIDE_OFFLINE),
    Case(
        "accelerate launch recipes/sam2_mineapple.py --learning_rate 3e-5 --prompt_type box",
        **GUIDE_OFFLINE,
    ),
    Case(
        "accelerate launch recipes/sam2_mineapple.py --resume_from_checkpoint true", **GUIDE_OFFLINE
    ),
    # --- Data ---
    Case(
        "python scripts/prepare_mineapple.py --source DIR --out OUT [--val-fraction 0.1]",
        "run",
        fill={"DIR": "{minneapple}", "OUT": "data/readme_mineapple"},
        creates=("data/readme_mineapple/dataset_dict.json", "data/readme_mineapple/README.md"),
    ),
    Case(
        "python scripts/prepare_coco_text.py --images DIR --annotations FILE.json --out OUT "
        "[--split NAME] [--noun-phrase-from-category]",
        "run",
        fill={
            "DIR": "{coco_images}",
            "FILE.json": "{coco_json}",
            "OUT": "data/readme_coco_text",
            "NAME": "train",
        },
        creates=("data/readme_coco_text/dataset_dict.json", "data/readme_coco_text/README.md"),
    ),
    Case(
        "python scripts/prepare_json_polygons.py --source DIR --out OUT",
        "run",
        fill={"DIR": "{json_polygons}", "OUT": "data/readme_json_polygons"},
        creates=("data/readme_json_polygons/dataset_dict.json",),
    ),
    Case(
        "python scripts/prepare_saco.py --images DIR --annotations FILE.json --out OUT "
        "[--split NAME]",
        "run",
        fill={
            "DIR": "{saco_images}",
            "FILE.json": "{saco_json}",
            "OUT": "data/readme_saco",
            "NAME": "test",
        },
        creates=("data/readme_saco/dataset_dict.json",),
    ),
    Case(
        "python scripts/make_synthetic_orchard.py --out DIR --num-images N --seed S "
        "[--image-size H W] [--zoom Z]",
        "run",
        fill={"DIR": "data/readme_orchard", "N": "4", "S": "0", "H": "64", "W": "64", "Z": "2"},
        creates=("data/readme_orchard/minneapple/train/masks", "data/readme_orchard/coco_text"),
    ),
    Case(
        "python scripts/download_mineapple.py --out data/raw",
        "fails_here",
        message=r"offline",
        max_seconds=60,
    ),
    Case(
        "python scripts/convert_mineapple_to_coco_text.py --input DIR --output DIR "
        "--attribute-templates sam_hf/assets/attribute_templates.yaml",
        "run",
        fill={"DIR": ("{minneapple}", "data/readme_minneapple_coco_text")},
        creates=("data/readme_minneapple_coco_text/annotations",),
    ),
    # --- Official checkpoints in and out ---
    Case(
        "python scripts/convert_checkpoint.py --to hf --in checkpoints/sam2.1_hiera_large.pt "
        "--out hf/sam2.1-large",
        "fails_here",
        message=r"checkpoints/sam2\.1_hiera_large\.pt: no such checkpoint file",
        max_seconds=60,
    ),
    Case(
        "python scripts/convert_checkpoint.py --to official --in outputs/run/final --out model.pt",
        "fails_here",
        # the demo's final/ is a fine-tune of a Hub-style folder: no memory modules to carry
        fill={"outputs/run/final": "outputs/sam2_demo/final"},
        message=r"has no official_extra\.safetensors.*--memory_from",
        max_seconds=60,
    ),
    Case(
        "accelerate launch recipes/sam2_mineapple.py --model_name_or_path "
        "checkpoints/sam2.1_hiera_large.pt --export_official true",
        "fails_here",
        message=r"checkpoints/sam2\.1_hiera_large\.pt",
    ),
    Case(
        "make test-official",
        "skip",
        reason="builds a second virtualenv with Meta's sam2 (a source build) and sam3 and runs "
        "the official tests: minutes; CI runs it (.ci/run), not from here",
    ),
    # --- The demo checkpoints ---
    Case(
        "python scripts/build_demo_checkpoints.py --family <family> --time_budget_minutes 8",
        "skip",
        reason="pretrains a demo checkpoint for 8 minutes; the budget mechanics (probe, "
        "max_steps, PRETRAINING.md) run in tests/test_demo_pretraining.py at a 0.6-minute budget",
    ),
    Case(
        "python scripts/build_demo_checkpoints.py --family sam2 --synthetic_num_images 1500 "
        "--num_correction_clicks 0 --per_device_train_batch_size 16 --dataloader_num_workers 1 "
        "--max_steps 1500 --eval_strategy steps --eval_steps 150 --max_eval_samples 48 "
        "--eval_on_start true",
        "skip",
        reason="pretrains the shipped sam2-mini-shapes: 62 minutes on this CPU; its flags are "
        "parsed against the recipe in tests/test_hf_interface.py",
    ),
    Case(
        "python scripts/build_demo_checkpoints.py --family sam2 --model_name_or_path "
        "sam_hf/assets/checkpoints/sam2-mini-shapes --synthetic_num_images 1500 "
        "--per_device_train_batch_size 16 --dataloader_num_workers 1 --max_steps 100 "
        "--learning_rate 3.0e-4 --warmup_steps 10 --eval_strategy steps --eval_steps 50 "
        "--max_eval_samples 48 --eval_on_start true",
        "skip",
        reason="stage 2 of the shipped sam2-mini-shapes (correction clicks): 11 minutes on this "
        "CPU; its flags are parsed against the recipe in tests/test_hf_interface.py",
    ),
    Case(
        "python scripts/build_demo_checkpoints.py --family sam2 --model_name_or_path "
        "sam_hf/assets/checkpoints/sam2-mini-shapes --dataset_path data/clutter_256 "
        "--synthetic_kind clutter --synthetic_num_images 3000 --per_device_train_batch_size 16 "
        "--dataloader_num_workers 1 --max_steps 1161 --learning_rate 5.0e-4 --warmup_steps 50 "
        "--num_correction_clicks 2 --eval_strategy steps --eval_steps 250 --max_eval_samples 48 "
        "--eval_on_start true",
        "skip",
        reason="stage 3 of the shipped sam2-mini-shapes (shapes in clutter): 66 minutes on one "
        "thread of this CPU; its flags are parsed against the recipe in tests/test_hf_interface.py",
    ),
    Case(
        "python scripts/build_demo_checkpoints.py --family sam3 --model_name_or_path "
        "sam_hf/assets/checkpoints/sam3-tiny-shapes --dataset_path data/clutter_112 "
        "--synthetic_kind clutter --synthetic_num_images 6000 --per_device_train_batch_size 16 "
        "--dataloader_num_workers 1 --max_steps 9594 --learning_rate 5.0e-4 --warmup_steps 50 "
        "--eval_strategy steps --eval_steps 1000 --max_eval_samples 64 --eval_on_start true",
        "skip",
        reason="stage 2 of the shipped sam3-tiny-shapes (shapes in clutter): 56 minutes on one "
        "thread of this CPU; its flags are parsed against the recipe in tests/test_hf_interface.py",
    ),
    Case(
        "python scripts/mask_ceiling.py --data data/synthetic_orchard_demo --resolution 256",
        "run",
    ),
    Case(
        "python scripts/build_demo_checkpoints.py --family sam3_tracker --synthetic_num_images 1500 "
        "--num_correction_clicks 0 --per_device_train_batch_size 16 --dataloader_num_workers 1 "
        "--max_steps 1191 --eval_strategy steps --eval_steps 150 --max_eval_samples 48 "
        "--eval_on_start true",
        "skip",
        reason="pretrains the shipped sam3-tracker-mini-shapes: about an hour on this CPU; its "
        "flags are parsed against the recipe in tests/test_hf_interface.py",
    ),
    Case(
        "python scripts/build_demo_checkpoints.py --family sam3_tracker --model_name_or_path "
        "sam_hf/assets/checkpoints/sam3-tracker-mini-shapes --dataset_path data/clutter_224 "
        "--synthetic_kind clutter --synthetic_num_images 3000 --per_device_train_batch_size 16 "
        "--dataloader_num_workers 1 --max_steps 1000 --learning_rate 5.0e-4 --warmup_steps 50 "
        "--num_correction_clicks 2 --eval_strategy steps --eval_steps 250 --max_eval_samples 48 "
        "--eval_on_start true",
        "skip",
        reason="stage 4 of the shipped sam3-tracker-mini-shapes (shapes in clutter): 55 minutes "
        "on one thread of this CPU; its flags are parsed against the recipe in "
        "tests/test_hf_interface.py",
    ),
    Case(
        "make demo-sam3-tracker",
        "skip",
        reason="the SAM3 tracker demo, then the forgetting table; the README's `accelerate "
        "launch ... sam3_tracker_demo.yaml` command runs the same fine-tune here",
    ),
    Case(
        "accelerate launch recipes/sam3_tracker_mineapple.py --config "
        "recipes/sam3_tracker_demo.yaml --output_dir outputs/sam3_tracker_demo",
        "run",
        creates=(
            "outputs/sam3_tracker_demo/eval_results.json",
            "outputs/sam3_tracker_demo/final/config.json",
        ),
    ),
    Case(
        "bash scripts/build_demo_checkpoints_gpu.sh OUT 5.5",
        "skip",
        reason="trains three demo-checkpoint candidates side by side on a GPU for 5.5 minutes",
    ),
    Case(
        "accelerate launch recipes/sam3_coco_text.py --config recipes/sam3_demo.yaml "
        "--output_dir outputs/sam3_demo",
        "run",
        creates=(
            "outputs/sam3_demo/eval_results.json",
            "outputs/sam3_demo/final/config.json",
            "outputs/sam3_demo/best",
        ),
    ),
    Case(
        "accelerate launch --mixed_precision",
        "skip",
        reason="names accelerate launch's flag in prose (where the precision comes from), "
        "not a command to run",
    ),
    # --- Multi-GPU, clusters, LoRA, tracking, the Hub ---
    Case(
        "accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml "
        "--num_processes 8 recipes/sam2_mineapple.py",
        "skip",
        reason="needs 8 GPUs (without them accelerate starts 8 CPU ranks: a minute of 8 "
        "tracebacks)",
    ),
    Case(
        "accelerate launch --config_file recipes/accelerate_configs/fsdp.yaml "
        "recipes/sam2_mineapple.py",
        "skip",
        reason="needs 8 GPUs (the config's num_processes) for FSDP",
    ),
    Case(
        "sbatch --nodes 2 --gres gpu:8 scripts/slurm/multinode.sbatch recipes/sam2_mineapple.py "
        "--config my.yaml",
        "skip",
        reason="submits a SLURM job (2 nodes x 8 GPUs); no cluster here",
    ),
    Case(
        "python scripts/push_to_hub.py OUTPUT_DIR --repo-id ID",
        "fails_here",
        fill={"OUTPUT_DIR": "outputs/sam2_demo", "ID": "me/sam2-apples"},
        message=r"offline",
        max_seconds=60,
    ),
    Case("huggingface-cli login", "skip", reason="interactive; stores a Hub token"),
    # --- Evaluation ---
    Case(
        "python scripts/evaluate.py sam2 --model outputs/sam2_demo/final --baseline "
        "sam_hf/assets/checkpoints/sam2-tiny-shapes --data <data> --split validation --out <out>",
        "run",
        results_flag="--out",
        creates=("{out}/report.md", "{out}/report.json", "{out}/records/sam2.json"),
    ),
    Case(
        "python scripts/evaluate.py sam3 --model outputs/sam3_demo/final --baseline "
        "sam_hf/assets/checkpoints/sam3-tiny-shapes --data <data> --split validation --out <out>",
        "run",
        results_flag="--out",
        creates=("{out}/report.md", "{out}/report.json", "{out}/records/sam3.json"),
    ),
    Case(
        "python scripts/evaluate.py compare --sam2 outputs/sam2_demo/final --sam3 "
        "outputs/sam3_demo/final --sam2-baseline sam_hf/assets/checkpoints/sam2-tiny-shapes "
        "--sam3-baseline sam_hf/assets/checkpoints/sam3-tiny-shapes --data <data> "
        "--split validation --out <out>",
        "run",
        results_flag="--out",
        creates=("{out}/report.md", "{out}/records/sam2.json", "{out}/records/sam3.json"),
    ),
    Case(
        "python scripts/evaluate.py sam3_tracker --model outputs/sam3_tracker_demo/final "
        "--data <data> --split validation --out <out>",
        "run",
        results_flag="--out",
        creates=("{out}/report.md", "{out}/report.json", "{out}/records/sam3-tracker.json"),
    ),
    Case(
        "python scripts/evaluate.py compare --sam2 outputs/sam2_demo/final --sam3-tracker "
        "outputs/sam3_tracker_demo/final --sam3 outputs/sam3_demo/final --data <data> "
        "--split validation --out <out>",
        "run",
        results_flag="--out",
        creates=("{out}/report.md", "{out}/equal_prompt_gap.png", "{out}/records/sam3.json"),
    ),
    Case(
        'python scripts/predict.py --model outputs/sam3_demo/final --images DIR --text "ripe red '
        'apple" --out <out>',
        "run",
        fill={"DIR": "{coco_images}"},
        results_flag="--out",
        creates=("{out}/predictions.json",),
    ),
    Case(
        "python scripts/plot_run.py outputs/sam2_demo",
        "run",
        creates=("outputs/sam2_demo/loss_curves.png",),
    ),
    # --- Performance ---
    Case(
        "python benchmarks/gpu_suite.py",
        "fails_here",
        message=r"needs a CUDA GPU",
        max_seconds=90,
        skip_on_gpu=True,
    ),
    Case("pip install -e .[memory]", "skip", reason=PIP),
    *(
        Case(f"python benchmarks/{name}.py", "skip", reason=BENCHMARK)
        for name in (
            "optimizer_memory",
            "run_all",
            "loop_overhead",
            "cache_speedup",
            "cache_speedup_sam3",
            "peer_sam2",
            "data_headroom",
            "arrow_reload",
            "metrics_speed",
        )
    ),
    # --- Development ---
    Case(
        "make test-slow",
        "skip",
        reason="runs every slow test, this one included (recursion), far beyond its budget",
    ),
    Case("make lint", "run"),
]


def case_for(command: str) -> tuple[Case, re.Match[str]]:
    hits = [(c, m) for c in CASES if (m := pattern(c.pattern).fullmatch(command))]
    if len(hits) != 1:
        which = "no entry" if not hits else f"{len(hits)} entries"
        raise AssertionError(
            f"README command {command!r} matches {which} of CASES in {Path(__file__).name}: "
            "add (or fix) the entry that says how to run or check it"
        )
    return hits[0]


def fill_placeholders(command: str, case: Case, values: dict[str, str]) -> str:
    """The README command with its ``[...]`` parts kept or dropped and its placeholders (whole
    words) replaced; a tuple of values is used in order of appearance."""
    if case.optional == "drop":
        command = re.sub(r"\s*\[[^\]]*\]", "", command)
    else:
        command = re.sub(r"\[([^\]]*)\]", r"\1", command)
    if not case.fill:
        return command
    queues = {k: list(v) if isinstance(v, tuple) else None for k, v in case.fill.items()}

    def sub(m: re.Match[str]) -> str:
        queue = queues[m.group(0)]
        value = queue.pop(0) if queue is not None else case.fill[m.group(0)]
        return value.format(**values)

    words = sorted(case.fill, key=len, reverse=True)
    regex = r"(?<!\S)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\S)"
    filled = re.sub(regex, sub, command)
    unused = {k: q for k, q in queues.items() if q}
    assert not unused, f"placeholders not found in {command!r}: {unused}"
    return filled


def flag_value(command: str, flag: str) -> str:
    words = shlex.split(command)
    assert flag in words, f"{command!r} has no {flag}"
    return words[words.index(flag) + 1]


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# The copy of the repository and the tiny inputs standing in for the user's data
# ---------------------------------------------------------------------------------------------


@dataclass
class Workspace:
    root: Path  # the copy of the repository
    env: dict[str, str]
    values: dict[str, str]  # placeholder values: tiny inputs made here
    results: dict[str, dict[str, Any]] = field(default_factory=dict)


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "core.hooksPath=/dev/null", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def copy_working_tree(dest: Path) -> None:
    """Tracked and untracked-but-not-ignored files of the checkout, as they are now, committed
    into a fresh repository (whose ``git status`` then shows what the commands added)."""
    listed = _git(REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for rel in sorted(set(filter(None, listed.split("\0")))):
        src = REPO / rel
        if src.is_file() or src.is_symlink():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel, follow_symlinks=False)
    _git(dest, "init", "-q")
    _git(dest, "add", "-A")
    _git(
        dest, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy", "--no-gpg-sign"
    )


def make_venv(path: Path) -> Path:
    """A virtualenv that sees this environment's packages (a .pth file) but installs into
    itself: ``pip install -e .`` there never touches the environment running the tests."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    purelib = Path(
        subprocess.run(
            [
                path / "bin" / "python",
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "_readme_parent_env.pth").write_text("\n".join(sorted(ours)) + "\n")
    for name in ("pip", "pip3"):  # a bare `pip` must install here too, not into our environment
        shim = path / "bin" / name
        shim.write_text('#!/bin/sh\nexec "$(dirname "$0")/python" -m pip "$@"\n')
        shim.chmod(0o755)
    return path / "bin"


def make_inputs(root: Path) -> dict[str, str]:
    """Tiny stand-ins for the user's data, built with the converter tests' helpers."""
    write_split(root / "minneapple", "train", 4)
    write_split(root / "minneapple", "test", 2, masks=False)
    coco_images, coco_json = write_coco(root / "coco", coco_doc())
    saco_images, saco_json = write_coco(root / "saco", saco_doc())
    poly = root / "json_polygons"
    apple = {"instance_id": 1, "label": "apple", "segmentation": {"polygon": POLY}}
    write_jsonpoly(poly, "train", "a", [apple])
    write_jsonpoly(poly, "train", "b", [])
    write_jsonpoly(poly, "val", "c", [apple])
    return {
        "minneapple": str(root / "minneapple"),
        "coco_images": str(coco_images),
        "coco_json": str(coco_json),
        "saco_images": str(saco_images),
        "saco_json": str(saco_json),
        "json_polygons": str(poly),
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    base = tmp_path_factory.mktemp("readme")
    root = base / "repo"
    root.mkdir()
    copy_working_tree(root)
    venv_bin = make_venv(base / "venv")
    values = make_inputs(base / "inputs")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV")
        and not k.startswith(("HF_", "HUGGING", "TRANSFORMERS_", "PYTEST_", "ACCELERATE_"))
    }
    env.update(
        PATH=os.pathsep.join([str(venv_bin), str(Path(sys.executable).parent), env["PATH"]]),
        VIRTUAL_ENV=str(venv_bin.parent),
        # the copy's sam_hf also for console scripts of this environment (accelerate)
        PYTHONPATH=str(root),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_MODE="offline",
        HF_HOME=str(base / "hf_home"),  # a fresh machine: nothing cached from the Hub
        PYTHONUNBUFFERED="1",
        TQDM_DISABLE="1",
    )
    return Workspace(root, env, values)


# ---------------------------------------------------------------------------------------------
# Running them
# ---------------------------------------------------------------------------------------------


def run_shell(command: str, ws: Workspace, timeout: int) -> tuple[int, str, float]:
    """``command`` through bash in the copy; on timeout its whole process group is killed."""
    start = time.monotonic()
    proc = subprocess.Popen(
        command,
        shell=True,
        executable="/bin/bash",
        cwd=ws.root,
        env=ws.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        out += f"\n[killed after {timeout} s]"
    return proc.returncode, out, time.monotonic() - start


def tail(text: str, n: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


def _param(c: ReadmeCommand) -> Any:
    marks = []
    try:
        case, _ = case_for(c.text)
    except AssertionError:
        case = None
    if case is not None and case.known_bug:
        marks.append(pytest.mark.xfail(raises=KnownBug, strict=True, reason=case.known_bug))
    words = re.sub(r"\W+", "_", c.text.replace("scripts/", "").replace("recipes/", ""))
    return pytest.param(c, marks=marks, id=f"L{c.line:03d}_{words[:60].strip('_')}")


def test_readme_has_commands() -> None:
    assert len(COMMANDS) >= 20, [c.text for c in COMMANDS]
    assert any(c.text == "make demo" for c in COMMANDS)


def test_every_case_matches_a_readme_command() -> None:
    """No stale entries: each entry of CASES still matches a command of the README."""
    stale = [
        c.pattern for c in CASES if not any(pattern(c.pattern).fullmatch(x.text) for x in COMMANDS)
    ]
    assert not stale, f"entries of CASES that match no README command: {stale}"


@pytest.mark.parametrize("command", [_param(c) for c in COMMANDS])
def test_readme_command(command: ReadmeCommand, workspace: Workspace) -> None:
    case, match = case_for(command.text)
    where = f"README.md line {command.line} ({command.where}): {command.text}"
    if case.action == "skip":
        pytest.skip(case.reason)
    if case.skip_on_gpu:
        import torch

        if torch.cuda.is_available():
            pytest.skip("with a CUDA GPU this runs the full GPU benchmark")
    ws = workspace
    filled = fill_placeholders(command.text, case, ws.values)
    out_dir = flag_value(filled, case.results_flag) if case.results_flag else ""

    if case.action == "demo_target":
        rc, dry, _ = run_shell("make -n demo", ws, 60)
        assert rc == 0, dry
        made = " ".join(dry.replace("\\\n", " ").split())
        script_and_args = command.text[command.text.index("recipes/") :]
        assert "accelerate launch" in made and script_and_args in made, (
            f"{where}\nis not what `make demo` runs:\n{made}"
        )
    else:
        rc, out, seconds = run_shell(filled, ws, case.timeout)
        ws.results[command.text] = {"command": filled, "rc": rc, "seconds": round(seconds, 1)}
        report = (
            f"{where}\nran: {filled}\nexit {rc} after {seconds:.0f} s; last lines:\n{tail(out)}"
        )
        if case.action == "run":
            assert rc == 0, report
        else:
            assert case.action == "fails_here", case.action
            assert rc != 0, f"expected to fail here (offline / no GPU), it did not:\n{report}"
            assert seconds < case.max_seconds, f"took {seconds:.0f} s to give up:\n{report}"
            assert re.search(case.message, out), f"no /{case.message}/ in the output:\n{report}"
            if TRACEBACK in out:
                raise KnownBug(f"a raw traceback instead of a one-line message:\n{report}")
    for rel in case.creates:
        path = ws.root / rel.format(**{**match.groupdict(), "out": out_dir})
        assert path.exists(), f"{where}\ndid not write {path.relative_to(ws.root)}"
    if out_dir:
        assert not Path(out_dir).is_absolute() and Path(out_dir).parts[0] == "outputs", (
            f"{where}\nwrites its results to {out_dir}/, not under outputs/ (ignored by git)"
        )
    if command.text == "make demo":
        results = json.loads((ws.root / "outputs/sam2_demo/eval_results.json").read_text())
        for prefix in ("initial_eval", "eval"):
            for metric in ("mean_iou", "mean_dice", "mean_boundary_f1"):
                assert f"{prefix}_{metric}" in results, (prefix, metric, results)


def test_commands_left_the_repository_clean(workspace: Workspace) -> None:
    """After the commands (run above, in README order): nothing new outside ignored paths."""
    if not workspace.results:
        pytest.skip("no README command ran in this session")
    status = _git(workspace.root, "status", "--porcelain", "--untracked-files=all")
    assert status == "", (
        "README commands left files outside ignored paths (results belong under outputs/, "
        f"data under data/):\n{status}\ncommands run: {json.dumps(workspace.results, indent=1)}"
    )
