"""Two real ranks on the CPU (gloo) follow the same learning-rate schedule as one process.

Accelerate's default steps a prepared scheduler ``num_processes`` times per optimizer step
(it assumes a schedule built in single-process steps); the trainer builds its schedule in
optimizer steps of the run, so it must step it once. Without that, a 2-rank cosine run
reached LR 0 halfway.
"""

from __future__ import annotations

import pytest
from test_multiprocess import _run


def _logged_lrs(out) -> list[float]:
    lines = (out / "training.log").read_text().splitlines()
    return [float(line.split("train/lr=")[1].split()[0]) for line in lines if "train/lr=" in line]


@pytest.mark.slow  # two accelerate launches
def test_two_ranks_step_the_schedule_once_per_optimizer_step(tmp_path):
    _run(tmp_path / "one", 1)
    _run(tmp_path / "two", 2)
    one, two = _logged_lrs(tmp_path / "one"), _logged_lrs(tmp_path / "two")
    assert len(one) == len(two) == 2
    assert one[1] < one[0]  # the cosine decays (halfway at step 1 of 2)
    assert two == one  # the same closed-form factors, computed the same way: equal exactly
