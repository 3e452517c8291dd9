"""Push a finished run (or a prepared dataset) to the Hugging Face Hub.

    python scripts/push_to_hub.py outputs/sam2_mineapple --repo-id me/sam2-apples
    python scripts/push_to_hub.py outputs/sam2_lora --repo-id me/sam2-apples-lora --public \\
        --dataset-repo-id me/mineapple
    python scripts/push_to_hub.py data/mineapple --repo-id me/mineapple     # a prepared dataset

A run folder pushes ``final/`` (merged or fully fine-tuned model) or ``final/adapter/`` (LoRA
without merge_lora) with a model card, its training config and eval results. A folder holding
``dataset_dict.json`` is a prepared dataset and pushes as Parquet with its data card.

The token comes from ``hf auth login`` or the HF_TOKEN environment variable only; there is
deliberately no --token flag (command lines end up in shell history and process lists).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from sam_hf.hub.push import dataset_url, describe_push_failure, push_dataset, push_output


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("path", type=Path, help="A run's output_dir, or a prepared dataset folder.")
    p.add_argument("--repo-id", required=True, help="Target repo, e.g. me/sam2-apples.")
    vis = p.add_mutually_exclusive_group()
    vis.add_argument("--private", dest="private", action="store_true", default=True)
    vis.add_argument("--public", dest="private", action="store_false")
    p.add_argument(
        "--dataset-repo-id",
        help="Hub dataset the run was trained on; the model card links its data card.",
    )
    p.add_argument(
        "--adapter-only",
        choices=["auto", "yes", "no"],
        default="auto",
        help="Push final/adapter/ only (auto: when the run used LoRA without merge_lora).",
    )
    p.add_argument("--subdir", default="final", help="Model folder of the run to push.")
    p.add_argument(
        "--no-validate",
        dest="validate",
        action="store_false",
        help="Skip the Hub's card validator (it needs the network, as the push does).",
    )
    return p.parse_args(argv)


def _push(args: argparse.Namespace) -> int:
    if (args.path / "dataset_dict.json").is_file():
        repo = push_dataset(args.path, args.repo_id, private=args.private, validate=args.validate)
        print(f"Pushed dataset to {dataset_url(repo)}")
        return 0
    adapter_only = {"auto": None, "yes": True, "no": False}[args.adapter_only]
    push_output(
        args.path,
        args.repo_id,
        private=args.private,
        adapter_only=adapter_only,
        dataset_card_url=dataset_url(args.dataset_repo_id) if args.dataset_repo_id else None,
        model_subdir=args.subdir,
        validate=args.validate,
    )
    print(f"Pushed {args.path} to https://huggingface.co/{args.repo_id}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Push; a Hub, network, login or folder problem prints one line and returns 2."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        return _push(args)
    except Exception as e:  # noqa: BLE001 - expected failures become one line, others re-raise
        message = describe_push_failure(e, args.repo_id)
        if message is None:
            raise
        print(f"push_to_hub: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
