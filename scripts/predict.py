"""Apply a SAM3 model (text phrases) or a SAM2 / SAM3 tracker model (point/box prompts) to images.

    # SAM3: every instance of each phrase
    python scripts/predict.py --model outputs/sam3_demo/final --images DIR --text apple \
        "ripe red apple" --out OUT [--threshold 0.5] [--batch-size 4]
    # SAM2 or SAM3 tracker: one mask per prompt, prompts per image in a json file
    python scripts/predict.py --model outputs/sam2_demo/final --images DIR --prompts p.json --out OUT
    python scripts/predict.py --model outputs/sam3_tracker_demo/final --images DIR --prompts p.json \
        --out OUT

Writes ``OUT/predictions.json`` -- COCO results (``image_id``, ``category_id``,
``segmentation`` as compressed RLE with ``counts`` a str, ``score``) with the ``phrase`` of each
mask added -- ``OUT/images.json`` (a COCO file with the ``images`` and ``categories`` the results
refer to, so ``COCO("OUT/images.json").loadRes("OUT/predictions.json")`` always works) and one
overlay PNG per image in ``OUT/overlays/``.

Image ids (so ``COCO.loadRes`` works against the COCO json of the split the images came from):

1. ``--coco-json FILE``: ids from that file, matched by ``file_name`` (the path relative to
   ``--images``, else the base name); images it does not list are skipped, with a warning.
2. else a COCO json in ``annotations/`` beside ``--images`` or one level further up (the layouts
   ``scripts/make_synthetic_orchard.py`` and ``scripts/convert_mineapple_to_coco_text.py``
   write) that lists every image;
3. else file stems that are all integers (exports name images by their image id);
4. else 1, 2, ... in sorted file order.

Category ids: with a COCO json, a phrase equal to a category name gets its id, a phrase containing
one as a word ("ripe red apple" -> "apple") gets that id, other phrases new ids; without one,
1, 2, ... per distinct phrase. Either way ``images.json`` lists them.

Images are read by ``sam_hf.data.images.load_image`` (the reader of training and evaluation):
EXIF orientation applied (masks, sizes and prompt coordinates are those of the image as
displayed), 16-bit and float images scaled to 8 bits by their own value range, alpha composited
over black. An image that cannot be read (truncated, corrupt, unsupported) is reported by name
and skipped, and the run exits 0 with the count skipped; ``--strict`` stops at the first one
(exit 2). Outputs are written to a temporary folder beside ``--out`` and moved into it at the
end, so a run that predicts nothing (every image unreadable, or an error) creates no ``--out``
and leaves an existing one as it was.

Prompts file of SAM2 and the SAM3 tracker (the same file for both; coordinates in pixels of the image as displayed; keys: path relative to
``--images`` or base name; images without a key are skipped)::

    {"img1.png": [{"points": [[x, y], ...], "labels": [1, 0, ...]},   # labels default to 1
                  {"box": [x0, y0, x1, y1]},
                  {"box": [...], "points": [[x, y]], "labels": [0], "phrase": "apple"}]}

Score: SAM3's ``sigmoid(logit) x sigmoid(presence)``; SAM2's (and the tracker's) predicted IoU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from sam_hf.config.validate import GEOMETRIC_FAMILIES, family_name
from sam_hf.data import rle
from sam_hf.data.images import ImageReadError, load_image
from sam_hf.data.queries import normalize_phrase
from sam_hf.eval.pictures import prediction_figure, save_figure
from sam_hf.eval.sam2 import sam2_decode, to_model_coords, upsample_masks
from sam_hf.eval.sources import (
    EvaluationError,
    LoadedModel,
    load_model,
    resolve_source,
)

logger = logging.getLogger("sam_hf")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


# ------------------------------------------------------------------------------------ images


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursively), sorted by relative path."""
    if not root.is_dir():
        raise EvaluationError(f"--images {root} is not a folder.")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EvaluationError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}.")
    return files


def _coco_index(coco: dict) -> tuple[dict[str, int], dict[str, int]]:
    by_path, by_name = {}, {}
    for img in coco.get("images", []):
        if not isinstance(img, dict) or "file_name" not in img or "id" not in img:
            continue
        fn = str(img["file_name"]).replace("\\", "/")
        by_path[fn] = img["id"]
        by_name.setdefault(Path(fn).name, img["id"])
    return by_path, by_name


def _lookup(rel: str, by_path: dict, by_name: dict) -> Any:
    if rel in by_path:
        return by_path[rel]
    return by_name.get(Path(rel).name)


def _load_coco(path: Path) -> dict:
    try:
        coco = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EvaluationError(f"cannot read COCO json {path}: {e}") from e
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise EvaluationError(f"{path} is not a COCO json (no 'images' list).")
    return coco


def assign_image_ids(
    files: Sequence[Path], root: Path, coco_json: Path | None
) -> tuple[list[tuple[Path, int]], dict | None, str]:
    """``[(file, image_id)]`` for the images to predict, the COCO json used, and how ids were
    chosen (see the module docstring for the order of the rules)."""
    rels = [f.relative_to(root).as_posix() for f in files]
    if coco_json is not None:
        coco = _load_coco(coco_json)
        by_path, by_name = _coco_index(coco)
        out = [(f, _lookup(r, by_path, by_name)) for f, r in zip(files, rels)]
        missing = [r for (_, i), r in zip(out, rels) if i is None]
        if missing:
            logger.warning(
                "%d of %d images are not listed in %s and are skipped (first: %s).",
                len(missing),
                len(files),
                coco_json,
                missing[0],
            )
        out = [(f, i) for f, i in out if i is not None]
        if not out:
            raise EvaluationError(f"none of the images under {root} is listed in {coco_json}.")
        return out, coco, f"file names -> ids of {coco_json}"
    for folder in (root.parent / "annotations", root.parent.parent / "annotations"):
        if not folder.is_dir():
            continue
        for cand in sorted(folder.glob("*.json")):
            try:
                coco = _load_coco(cand)
            except EvaluationError:
                continue
            by_path, by_name = _coco_index(coco)
            ids = [_lookup(r, by_path, by_name) for r in rels]
            if all(i is not None for i in ids):
                return list(zip(files, ids)), coco, f"file names -> ids of {cand} (found beside)"
    stems = [f.stem for f in files]
    if all(re.fullmatch(r"\d+", s) for s in stems) and len(set(stems)) == len(stems):
        return [(f, int(s)) for f, s in zip(files, stems)], None, "integer file stems"
    return [(f, i) for i, f in enumerate(files, start=1)], None, "1..N in sorted file order"


def category_ids(phrases: Sequence[str], coco: dict | None) -> tuple[dict[str, int], list[dict]]:
    """Phrase -> category id, and the category list for images.json (see module docstring)."""
    cats = [dict(c) for c in (coco or {}).get("categories", []) if "id" in c and "name" in c]
    by_name = {normalize_phrase(c["name"]): int(c["id"]) for c in cats}
    known = dict(by_name)  # only the json's own categories stand in for phrases containing them
    next_id = max([int(c["id"]) for c in cats], default=0) + 1
    out: dict[str, int] = {}
    for p in phrases:
        key = normalize_phrase(p)
        if key in by_name:
            out[p] = by_name[key]
            continue
        words = [n for n in known if re.search(r"(?<!\w)" + re.escape(n) + r"(?!\w)", key)]
        if words:
            out[p] = known[max(words, key=len)]
            continue
        by_name[key] = next_id
        cats.append({"id": next_id, "name": p})
        out[p] = next_id
        next_id += 1
    return out, cats


def preprocess(
    image: Image.Image, resolution: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """The evaluation transform: RGB, squash-resize to R x R (bilinear), scale, normalise."""
    img = image if image.mode == "RGB" else load_image(image, orient=False)[0]
    img = img.resize((resolution, resolution), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


# ----------------------------------------------------------------------------------- models


@torch.no_grad()
def predict_text(
    loaded: LoadedModel, images: Sequence[Image.Image], phrases: Sequence[str], threshold: float
) -> list[list[tuple[str, np.ndarray, float]]]:
    """SAM3 on a batch of images, every phrase on every image: per image
    ``[(phrase, bool (H, W) mask, score)]`` for predictions scoring >= ``threshold``."""
    from sam_hf.data.tokenizer import PhraseTokenizer

    module = loaded.module
    device = next(module.parameters()).device
    ip = loaded.processor.image_processor
    res = loaded.resolution
    tok = PhraseTokenizer(loaded.processor.tokenizer)([normalize_phrase(p) for p in phrases])
    n_img, n_q = len(images), len(phrases)
    sizes = [(im.height, im.width) for im in images]
    batch = {
        "pixel_values": torch.stack(
            [preprocess(im, res, ip.image_mean, ip.image_std) for im in images]
        ).to(device),
        "image_ids": [str(i) for i in range(n_img)],
        "orig_sizes": sizes,
        "input_ids": tok["input_ids"].repeat(n_img, 1).to(device),
        "attention_mask": tok["attention_mask"].repeat(n_img, 1).to(device),
        "phrases": list(phrases) * n_img,
        "query_image": torch.arange(n_img).repeat_interleave(n_q).to(device),
        "is_negative": torch.zeros(n_img * n_q, dtype=torch.bool),
        # no ground truth: empty targets, so predict() only returns predictions
        "orig_masks": [torch.zeros((0, h, w), dtype=torch.bool) for h, w in sizes],
        "query_targets": [torch.zeros(0, dtype=torch.long)] * (n_img * n_q),
        "candidates": [None] * (n_img * n_q),
    }
    out = []
    for res_img in module.predict(batch):
        found = []
        for pair in res_img["pairs"]:
            for m, s in zip(pair["pred"].numpy(), pair["scores"].tolist()):
                if s >= threshold:
                    found.append((pair["phrase"], m, float(s)))
        out.append(found)
    return out


def _prompt_tensors(
    prompt: dict, size: tuple[int, int], res: int, where: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """One prompt dict -> (n, 2) model-frame points and (n,) labels (box corners first)."""
    pts, labs = [], []
    if "box" in prompt:
        box = prompt["box"]
        if not (isinstance(box, list | tuple) and len(box) == 4):
            raise EvaluationError(f"{where}: 'box' must be [x0, y0, x1, y1].")
        pts += [[float(box[0]), float(box[1])], [float(box[2]), float(box[3])]]
        labs += [2, 3]
    if "points" in prompt:
        p = prompt["points"]
        if not (
            isinstance(p, list)
            and p
            and all(isinstance(q, list | tuple) and len(q) == 2 for q in p)
        ):
            raise EvaluationError(f"{where}: 'points' must be a non-empty list of [x, y].")
        lab = prompt.get("labels", [1] * len(p))
        if len(lab) != len(p) or any(int(v) not in (0, 1) for v in lab):
            raise EvaluationError(f"{where}: 'labels' must hold one 0/1 per point.")
        pts += [[float(a), float(b)] for a, b in p]
        labs += [int(v) for v in lab]
    if not pts:
        raise EvaluationError(f"{where}: a prompt needs 'points' and/or 'box'.")
    xy = to_model_coords(torch.tensor(pts), size, res)
    return xy, torch.tensor(labs, dtype=torch.long)


@torch.no_grad()
def predict_prompts(
    loaded: LoadedModel,
    images: Sequence[Image.Image],
    prompts: Sequence[list[dict]],
    names: Sequence[str],
) -> list[list[tuple[str, np.ndarray, float]]]:
    """SAM2 or the SAM3 tracker (the same training wrapper, ``Sam2ForTraining``) on a batch of
    images: per image ``[(phrase, bool (H, W) mask, predicted IoU)]``, one per prompt, in
    prompt order."""
    module = loaded.module
    device = next(module.parameters()).device
    ip = loaded.processor.image_processor
    res = loaded.resolution
    pixel_values = torch.stack(
        [preprocess(im, res, ip.image_mean, ip.image_std) for im in images]
    ).to(device)
    embeddings = module.image_embeddings(pixel_values)
    out = []
    for i, (im, plist) in enumerate(zip(images, prompts)):
        size = (im.height, im.width)
        enc = [_prompt_tensors(p, size, res, f"{names[i]} prompt {k}") for k, p in enumerate(plist)]
        found: list[Any] = [None] * len(enc)
        by_count: dict[int, list[int]] = {}
        for k, (xy, _) in enumerate(enc):
            by_count.setdefault(xy.shape[0], []).append(k)
        for _, members in by_count.items():
            for start in range(0, len(members), 32):
                chunk = members[start : start + 32]
                points = torch.stack([enc[k][0] for k in chunk]).to(device)
                labels = torch.stack([enc[k][1] for k in chunk]).to(device)
                index = torch.full((len(chunk),), i, dtype=torch.long, device=device)
                low, score = sam2_decode(module, embeddings, index, points, labels, None)
                masks = upsample_masks(low, size).cpu().numpy()
                for j, k in enumerate(chunk):
                    phrase = str(plist[k].get("phrase") or plist[k].get("category") or "object")
                    found[k] = (phrase, masks[j], float(score[j]))
        out.append(found)
    return out


# ---------------------------------------------------------------------------------- outputs


def overlay_png(
    image: Image.Image,
    found: list[tuple[str, np.ndarray, float]],
    path: Path,
    title: str = "",
    phrases: Sequence[str] = (),
) -> None:
    """The image with every kept mask (:func:`sam_hf.eval.pictures.prediction_figure`): at
    least 1024 px on its long side, one colour per phrase with a legend counting them (the
    ``--text`` phrases first, so each keeps its colour in every image), each mask's score
    beside it, ``title`` (the image's name) on top."""
    save_figure(prediction_figure(image, found, title, phrases), path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", required=True, help="Model source (Hub id, folder, adapter, tiny).")
    p.add_argument("--images", required=True, help="Folder of images (searched recursively).")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", nargs="+", help="SAM3: noun phrase(s) to segment.")
    what.add_argument("--prompts", help="SAM2 / SAM3 tracker: json of point/box prompts per image.")
    p.add_argument("--out", required=True, help="Output folder.")
    p.add_argument("--batch-size", type=int, default=4, help="Images per forward pass.")
    p.add_argument("--threshold", type=float, default=0.5, help="SAM3 score to keep a mask.")
    p.add_argument("--coco-json", default=None, help="COCO json whose image ids to use.")
    p.add_argument("--resolution", type=int, default=None, help="Input size override.")
    p.add_argument("--seed", type=int, default=42, help="Seed of tiny random models.")
    p.add_argument("--no-overlays", action="store_true", help="Skip the overlay PNGs.")
    p.add_argument("--no-progress", action="store_true", help="No progress bar.")
    p.add_argument(
        "--strict",
        action="store_true",
        help="Stop (exit 2, nothing written) at the first unreadable image instead of skipping it.",
    )
    p.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu."
    )
    return p


def resolve_model(model: str, text: bool, seed: int, resolution: int | None) -> Any:
    """The model source for ``--text`` (SAM3) or ``--prompts`` (the families prompted by points
    and boxes, :data:`~sam_hf.config.validate.GEOMETRIC_FAMILIES`: SAM2 and the SAM3 tracker), with a
    family mismatch told in this script's own flags.

    A source that does not say its family is taken as the first family the mode accepts; a
    SAM3 Hub id or official ``sam3.pt`` given ``--prompts`` is its tracker (the file holds both).
    """
    wanted = ("sam3",) if text else GEOMETRIC_FAMILIES
    try:
        found = resolve_source(model, None, seed, resolution)
    except EvaluationError:
        return resolve_source(model, wanted[0], seed, resolution)
    if found.family in wanted:
        return found
    if not text and found.family == "sam3" and found.kind in ("hub", "official"):
        return resolve_source(model, "sam3_tracker", seed, resolution)
    given = "--text" if text else "--prompts"
    use = "--prompts FILE.json" if text else "--text PHRASE ..."
    names = " or ".join(family_name(f) for f in wanted)
    raise EvaluationError(
        f"{model!r} holds a {family_name(found.family)} model, but {given} is for {names}"
        f" models; segment with {use} instead, or give a {names} --model."
    )


def read_images(
    chunk: Sequence[tuple[Path, Any]], root: Path, strict: bool, skipped: list[str]
) -> list[tuple[Path, Any, Image.Image]]:
    """The readable images of a batch; unreadable ones are named in a warning and appended to
    ``skipped`` (``strict``: the first one is an error naming it)."""
    out = []
    for f, iid in chunk:
        rel = f.relative_to(root).as_posix()
        try:
            image, _ = load_image(f, name=rel)
        except ImageReadError as e:
            if strict:
                raise EvaluationError(
                    f"{e} (--strict stops at the first unreadable image)"
                ) from None
            logger.warning("skipping unreadable image %s", e)
            skipped.append(rel)
            continue
        out.append((f, iid, image))
    return out


def move_into(tmp: Path, out: Path) -> None:
    """Move every file under ``tmp`` to the same place under ``out`` (created if missing)."""
    for src in sorted(p for p in tmp.rglob("*") if p.is_file()):
        dst = out / src.relative_to(tmp)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Predict and write every output; returns a summary (counts and paths).

    Everything is written to a temporary folder beside ``--out`` and moved in at the end, so
    an error, or a folder where no image could be read, leaves no ``--out`` behind.
    """
    text = bool(args.text)
    if args.batch_size < 1:
        raise EvaluationError("--batch-size must be >= 1.")
    if not 0.0 <= args.threshold <= 1.0:
        raise EvaluationError("--threshold must be within [0, 1].")
    root = Path(args.images)
    files = list_images(root)
    pairs, coco, how = assign_image_ids(
        files, root, Path(args.coco_json) if args.coco_json else None
    )
    prompts: dict[str, list[dict]] = {}
    if not text:
        try:
            prompts = json.loads(Path(args.prompts).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise EvaluationError(f"cannot read --prompts {args.prompts}: {e}") from e
        if not isinstance(prompts, dict):
            raise EvaluationError("--prompts must hold a json object: image name -> prompts.")

        def key_of(f: Path) -> str | None:
            rel = f.relative_to(root).as_posix()
            return rel if rel in prompts else f.name if f.name in prompts else None

        pairs = [(f, i) for f, i in pairs if key_of(f) is not None]
        if not pairs:
            raise EvaluationError(f"no image under {root} has an entry in {args.prompts}.")
    src = resolve_model(args.model, text, args.seed, args.resolution)
    loaded = load_model(src, device=args.device)
    out = Path(args.out)
    parent = out.absolute().parent
    created = [p for p in (parent, *parent.parents) if not p.exists()]
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        summary = _predict_into(args, loaded, root, pairs, prompts, coco, how, tmp)
        if summary["images"] == 0:
            shown = ", ".join(summary["skipped"][:5])
            raise EvaluationError(
                f"no image could be read: {len(summary['skipped'])} unreadable ({shown}"
                f"{', ...' if len(summary['skipped']) > 5 else ''}); nothing written to {out}."
            )
        move_into(tmp, out)
        created = []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in created:  # folders made for --out, innermost first: left only if used
            try:
                p.rmdir()
            except OSError:
                break
    summary["out"] = str(out)
    return summary


def _predict_into(
    args: argparse.Namespace,
    loaded: LoadedModel,
    root: Path,
    pairs: list[tuple[Path, Any]],
    prompts: dict[str, list[dict]],
    coco: dict | None,
    how: str,
    out: Path,
) -> dict[str, Any]:
    phrases = list(dict.fromkeys(args.text or []))
    results: list[dict[str, Any]] = []
    images_meta: list[dict[str, Any]] = []
    all_phrases: list[str] = list(phrases)
    found_per_image = []
    skipped: list[str] = []

    def key_of(f: Path) -> str:
        rel = f.relative_to(root).as_posix()
        return rel if rel in prompts else f.name

    for start in tqdm(
        range(0, len(pairs), args.batch_size), desc="predict", disable=args.no_progress
    ):
        chunk = read_images(pairs[start : start + args.batch_size], root, args.strict, skipped)
        if not chunk:
            continue
        ims = [im for _, _, im in chunk]
        if args.text:
            found = predict_text(loaded, ims, phrases, args.threshold)
        else:
            plist = [prompts[key_of(f)] for f, _, _ in chunk]
            found = predict_prompts(loaded, ims, plist, [f.name for f, _, _ in chunk])
        for (f, iid, im), items in zip(chunk, found):
            rel = f.relative_to(root).as_posix()
            images_meta.append(
                {"id": iid, "file_name": rel, "width": im.width, "height": im.height}
            )
            found_per_image.append(len(items))
            for phrase, _, _ in items:
                if phrase not in all_phrases:
                    all_phrases.append(phrase)
            cats, _ = category_ids(all_phrases, coco)
            for phrase, mask, score in items:
                results.append(
                    {
                        "image_id": iid,
                        "category_id": cats[phrase],
                        "segmentation": rle.encode(mask),
                        "score": round(score, 6),
                        "phrase": phrase,
                    }
                )
            if not args.no_overlays:
                overlay_png(
                    im, items, out / "overlays" / Path(rel).with_suffix(".png"), rel, phrases
                )
    summary = {
        "images": len(images_meta),
        "predictions": len(results),
        "image_ids": how,
        "per_image": found_per_image,
        "skipped": skipped,
    }
    if not images_meta:
        return summary
    cats, categories = category_ids(all_phrases, coco)
    (out / "predictions.json").write_text(json.dumps(results))
    (out / "images.json").write_text(
        json.dumps(
            {
                "images": images_meta,
                "categories": categories,
                "annotations": [],
                "info": {"image_ids": how, "model": args.model},
            }
        )
    )
    if not results:
        logger.warning(
            "No prediction passed the threshold: predictions.json is an empty list (which "
            "pycocotools' loadRes cannot load). Lower --threshold or check the model."
        )
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        summary = run(args)
    except (EvaluationError, OSError, ValueError) as e:  # noqa: B014 - messages, not tracebacks
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{summary['predictions']} masks on {summary['images']} images "
        f"(image ids: {summary['image_ids']}) -> {summary['out']}/predictions.json"
    )
    if summary["skipped"]:
        print(
            f"{len(summary['skipped'])} unreadable image(s) skipped (named in the warnings above;"
            " --strict stops at the first): " + ", ".join(summary["skipped"])
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
