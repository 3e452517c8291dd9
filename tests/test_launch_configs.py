"""The accelerate configs and the SLURM template: they load, name real options and real classes,
and the template composes the per-node ``accelerate launch`` command it documents."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import launch_command_parser
from accelerate.utils import DistributedType

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "accelerate_configs"
SBATCH = ROOT / "scripts" / "slurm" / "multinode.sbatch"


@pytest.mark.parametrize(
    "name, kind, nproc",
    [
        ("single_gpu", DistributedType.NO, 1),
        ("multi_gpu", DistributedType.MULTI_GPU, 8),
        ("fsdp", DistributedType.FSDP, 8),
    ],
)
def test_accelerate_config_loads(name, kind, nproc):
    cfg = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert isinstance(cfg, ClusterConfig)
    assert cfg.distributed_type == kind
    assert cfg.num_processes == nproc and cfg.num_machines == 1
    assert cfg.mixed_precision == "no"  # precision belongs to the recipe YAML


def test_fsdp_config_uses_real_launch_options_and_sam_block_classes():
    import transformers.models.sam2.modeling_sam2 as sam2
    import transformers.models.sam3.modeling_sam3 as sam3
    from transformers.models.clip import modeling_clip

    fsdp = load_config_from_file(str(CONFIGS / "fsdp.yaml")).fsdp_config
    options = {a.dest: a for a in launch_command_parser()._actions if a.dest.startswith("fsdp_")}
    assert set(fsdp) <= set(options), set(fsdp) - set(options)
    assert str(fsdp["fsdp_version"]) in options["fsdp_version"].choices
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_reshard_after_forward"] is True  # full shard
    for cls in fsdp["fsdp_transformer_layer_cls_to_wrap"].split(","):
        assert hasattr(sam2, cls), cls
    # the SAM3 override documented in the file names classes that exist too
    text = (CONFIGS / "fsdp.yaml").read_text()
    sam3_classes = text.split("--fsdp_transformer_layer_cls_to_wrap ")[1].split()[0].split(",")
    for cls in sam3_classes:
        assert hasattr(sam3, cls) or hasattr(modeling_clip, cls), cls


def _fake_bin(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


def test_sbatch_template_launches_one_accelerate_per_node(tmp_path):
    """Fake srun/scontrol/accelerate on PATH: srun runs the task once per node like SLURM."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "launches.jsonl"
    _fake_bin(
        bin_dir,
        "srun",
        # drop srun's own options, then run the task as node 0 and node 1
        'while [[ "$1" == --* ]]; do shift; done\n'
        'for id in 0 1; do SLURM_NODEID=$id "$@" || exit 1; done\n',
    )
    _fake_bin(bin_dir, "scontrol", 'printf "gpu-node-07\\ngpu-node-08\\n"\n')
    _fake_bin(
        bin_dir,
        "accelerate",
        'python3 -c \'import json, os, sys; print(json.dumps({"argv": sys.argv[1:], '
        f'"omp": os.environ.get("OMP_NUM_THREADS")}}))\' "$@" >> {log}\n',
    )
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_NNODES": "2",
        "SLURM_GPUS_ON_NODE": "4",
        "SLURM_CPUS_PER_TASK": "32",
        "SLURM_JOB_NODELIST": "gpu-node-[07-08]",
        "MAIN_PORT": "29555",
        "HOME": str(tmp_path),
    }
    recipe_args = ["--config", "my config.yaml", "--learning_rate", "3e-5"]
    proc = subprocess.run(
        ["bash", str(SBATCH), "recipes/sam2_mineapple.py", *recipe_args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 node(s) x 4 GPU(s) = 8 processes" in proc.stdout
    launches = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(launches) == 2
    for rank, launch in enumerate(launches):
        argv = launch["argv"]
        assert argv[0] == "launch"
        opts = dict(zip(argv[1:13:2], argv[2:13:2]))
        assert opts == {
            "--config_file": "recipes/accelerate_configs/multi_gpu.yaml",
            "--num_machines": "2",
            "--num_processes": "8",
            "--machine_rank": str(rank),
            "--main_process_ip": "gpu-node-07",
            "--main_process_port": "29555",
        }
        assert argv[13:] == ["recipes/sam2_mineapple.py", *recipe_args]
        assert launch["omp"] == "8"

    usage = subprocess.run(["bash", str(SBATCH)], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr
