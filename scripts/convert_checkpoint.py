"""Convert official SAM2 / SAM2.1 (and SAM3, where sam_hf.convert.sam3 provides it) checkpoints
to transformers folders and back.

    # official .pt -> a folder Sam2Model.from_pretrained loads (+ official_extra.safetensors)
    python scripts/convert_checkpoint.py --to hf --in checkpoints/sam2.1_hiera_large.pt --out hf/
    # a folder (converted, or a run's final/) -> official .pt for the official predictors
    python scripts/convert_checkpoint.py --to official --in outputs/run/final --out model.pt
    # a folder without official_extra.safetensors (e.g. fine-tuned from a Hub id): take the
    # memory modules from the official .pt of the same size
    python scripts/convert_checkpoint.py --to official --in final/ --out model.pt \
        --memory_from checkpoints/sam2.1_hiera_large.pt

The SAM2 size is read from the tensors; ``--model_type`` (``sam2.1-hiera-large`` ...) names it
when they cannot. Every key is checked: unknown, missing or unused keys are an error listing
them, never a partial conversion. Exit status 2 on such an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sam_hf.convert import sam2 as sam2_convert
from sam_hf.convert.common import ConversionError, read_official


def _family_of_state(path: Path) -> str:
    keys = read_official(path).keys()
    if any(k.startswith("image_encoder.trunk.") for k in keys):
        return "sam2"
    if any(k.startswith(("detector.", "backbone.vision_backbone.", "tracker.")) for k in keys):
        return "sam3"
    raise ConversionError(f"{path}: neither a SAM2 nor a SAM3 official checkpoint.")


def _family_of_folder(path: Path) -> str:
    file = path / "config.json"
    if not file.is_file():
        raise ConversionError(f"{path}: not a transformers model folder (no config.json).")
    model_type = str(json.loads(file.read_text()).get("model_type", ""))
    if model_type.startswith("sam3"):
        return "sam3"
    if model_type.startswith("sam2"):
        return "sam2"
    raise ConversionError(f"{path}: holds a {model_type!r} model, neither SAM2 nor SAM3.")


def _sam3():
    try:
        from sam_hf.convert import sam3
    except ImportError as e:
        raise ConversionError(f"SAM3 conversion is not supported here ({e}).") from e
    return sam3


def convert(to: str, src: Path, out: Path, model_type: str | None, memory_from: Path | None):
    if to == "hf":
        if _family_of_state(src) == "sam3":
            return _sam3().official_to_folder(src, out)
        return sam2_convert.official_to_folder(src, out, model_type)
    if _family_of_folder(src) == "sam3":
        return _sam3().folder_to_official(src, out, memory_from)
    return sam2_convert.folder_to_official(src, out, memory_from)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--to", required=True, choices=["hf", "official"])
    p.add_argument("--in", dest="src", required=True, type=Path, help=".pt (to hf) or folder")
    p.add_argument("--out", required=True, type=Path, help="folder (to hf) or .pt")
    p.add_argument("--model_type", default=None, help="SAM2 size, e.g. sam2.1-hiera-large")
    p.add_argument(
        "--memory_from",
        default=None,
        type=Path,
        help="official .pt to take the memory modules from (to official)",
    )
    args = p.parse_args(argv)
    try:
        out = convert(args.to, args.src, args.out, args.model_type, args.memory_from)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
