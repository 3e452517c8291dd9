"""COCO-text export with template phrases, data cards, the MinneApple downloader, and CLIs."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import datasets
import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools.coco import COCO

from sam_hf.data import rle
from sam_hf.data.cards.dataset_card import CARDS, render_card
from sam_hf.data.report import ConversionError, Report, SplitStats
from sam_hf.data.sources.coco_export import (
    PhraseTemplates,
    convert_to_coco_text,
    default_templates_path,
)
from sam_hf.data.sources.minneapple_download import (
    DownloadError,
    download_file,
    download_minneapple,
    extract_archive,
)

REPO = Path(__file__).resolve().parents[1]
H, W = 20, 24


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_minneapple(root: Path, n: int = 2) -> dict[str, np.ndarray]:
    (root / "train/images").mkdir(parents=True)
    (root / "train/masks").mkdir(parents=True)
    labels = {}
    for i in range(n):
        img = np.random.default_rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / f"train/images/f{i}.png")
        label = np.zeros((H, W), np.uint8)
        label[2:8, 3 + i : 9 + i] = 1
        label[10:18, 12:20] = 4
        Image.fromarray(label).save(root / f"train/masks/f{i}.png")
        labels[f"f{i}"] = label
    return labels


def write_jsonpoly(root: Path) -> None:
    (root / "train/images").mkdir(parents=True)
    (root / "train/annotations").mkdir(parents=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "train/images/p.jpg")
    instances = [
        {
            "instance_id": 1,
            "label": "apple",
            "segmentation": {"polygon": [[1, 1, 9, 1, 9, 9, 1, 9]]},
            "attributes": {"color": "red", "ripeness": "ripe", "health": "damaged"},
        },
        {
            "instance_id": 2,
            "label": "apple",
            "segmentation": {"polygon": [[12, 2, 20, 2, 16, 9]]},
            "attributes": {"color": "green"},
        },
        {"instance_id": 3, "label": "apple", "segmentation": {"polygon": [[2, 12, 8, 12, 5, 18]]}},
    ]
    doc = {"image_id": "p", "width": W, "height": H, "instances": instances}
    (root / "train/annotations/p.json").write_text(json.dumps(doc))


# ---------------------------------------------------------------------------------------------
# Phrase templates
# ---------------------------------------------------------------------------------------------


def test_templates_compose_most_specific_first() -> None:
    t = PhraseTemplates.from_yaml(None)  # the shipped default
    assert t.compose({"ripeness": "ripe", "color": "red"}, "apple") == "ripe red apple"
    assert (
        t.compose({"ripeness": "ripe", "color": "red", "health": "damaged"}, "apple")
        == "damaged ripe red apple"
    )
    assert (
        t.compose({"ripeness": "ripe", "color": "red", "health": "healthy"}, "apple")
        == "ripe red apple"
    )
    assert t.compose({"color": "yellow", "size": "big"}, "apple") == "yellow apple"
    assert t.compose({}, "apple") == "apple"
    assert t.compose({"size": "big"}, "apple") == "apple"  # no template fits: the base noun
    custom = PhraseTemplates(["{health} {ripeness} apple"], values={"health": {"healthy": ""}})
    assert custom.compose({"health": "healthy", "ripeness": "unripe"}, "ignored") == "unripe apple"
    assert (
        PhraseTemplates(["{color} {noun}"], base_noun="fruit").compose({"color": "red"}, "apple")
        == "red fruit"
    )


def test_bad_templates_file_names_itself(tmp_path: Path) -> None:
    bad = tmp_path / "t.yaml"
    bad.write_text("templates: ['{color!r} apple']")
    with pytest.raises(ConversionError, match="t.yaml: template"):
        PhraseTemplates.from_yaml(bad)
    bad.write_text("just: text")
    with pytest.raises(ConversionError, match="t.yaml: templates file needs a 'templates:' list"):
        PhraseTemplates.from_yaml(bad)
    assert default_templates_path().is_file()


# ---------------------------------------------------------------------------------------------
# Export to COCO-text
# ---------------------------------------------------------------------------------------------


def test_minneapple_to_coco_text_round_trip(tmp_path: Path) -> None:
    labels = write_minneapple(tmp_path / "src")
    report, written = convert_to_coco_text(
        tmp_path / "src", tmp_path / "coco", cache_dir=tmp_path / "cache"
    )
    assert report.images == 2 and report.objects == 4
    ann_file = tmp_path / "coco/annotations/train.json"
    assert written == {"train": ann_file}
    coco = COCO(str(ann_file))
    for img in coco.dataset["images"]:
        stem = Path(img["file_name"]).stem
        label = labels[stem]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        assert [a["noun_phrase"] for a in anns] == ["apple", "apple"]  # no attributes: base noun
        for inst_id, ann in zip([1, 4], anns):
            assert np.array_equal(coco.annToMask(ann).astype(bool), label == inst_id)
        assert (tmp_path / "coco/images" / img["file_name"]).read_bytes() == (
            tmp_path / f"src/train/images/{stem}.png"
        ).read_bytes()
    # and back through the COCO-text reader
    prepare = load_script("prepare_coco_text")
    rc = prepare.main(
        [
            "--images",
            str(tmp_path / "coco/images"),
            "--annotations",
            str(ann_file),
            "--out",
            str(tmp_path / "ds"),
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    assert rc == 0
    ds = datasets.load_from_disk(str(tmp_path / "ds"))["train"]
    for row, stem in zip(ds, ["f0", "f1"]):
        assert [rle.decode(o["segmentation"]).sum() for o in row["objects"]] == [
            (labels[stem] == 1).sum(),
            (labels[stem] == 4).sum(),
        ]


def test_cli_convert_json_polygons_with_attributes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_jsonpoly(tmp_path / "src")
    script = load_script("convert_mineapple_to_coco_text")
    rc = script.main(
        [
            "--input",
            str(tmp_path / "src"),
            "--output",
            str(tmp_path / "out"),
            "--attribute-templates",
            str(default_templates_path()),
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "out/annotations/train.json").read_text())
    assert [a["noun_phrase"] for a in doc["annotations"]] == [
        "damaged ripe red apple",
        "green apple",
        "apple",
    ]
    assert doc["annotations"][0]["attributes"] == {
        "color": "red",
        "ripeness": "ripe",
        "health": "damaged",
    }
    assert "attributes" not in doc["annotations"][2]
    assert doc["images"][0]["file_name"] == "train/p.jpg"  # the real format keeps its suffix
    assert "3 objects" in capsys.readouterr().out
    # bad input: exit 2 and nothing written
    (tmp_path / "src/train/annotations/p.json").write_text("{")
    rc = script.main(
        [
            "--input",
            str(tmp_path / "src"),
            "--output",
            str(tmp_path / "out2"),
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    assert rc == 2 and "p.json: image p: cannot parse annotation file" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


# ---------------------------------------------------------------------------------------------
# Data cards
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["minneapple", "synthetic_orchard", "coco_text"])
def test_data_cards_in_repo_match_the_package(name: str) -> None:
    text = (REPO / "data_cards" / f"{name}.md").read_text()
    assert text == str(render_card(name)), (
        f"regenerate data_cards/{name}.md from sam_hf.data.cards.dataset_card"
    )
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["license"] == CARDS[name].data.license
    assert header["task_categories"] and header["tags"]
    for section in ("## Dataset structure", "## Dataset creation", "## Limitations", "## Citation"):
        assert section in text


def test_minneapple_card_facts() -> None:
    text = str(render_card("minneapple"))
    assert "license: cc-by-nc-sa-3.0" in text and "CC BY-NC-SA 3.0 US" in text
    for fact in (
        "670 training images",
        "331 test",
        "720 pixels wide and 1280 high",
        "123 apples",
        "10.1109/LRA.2020.2965061",
        "Nicolai Häni, Pravakar Roy and Volkan Isler",
    ):
        assert fact in text


def test_card_with_counts() -> None:
    report = Report()
    report.splits = {"train": SplitStats(images=5, objects=7)}
    report.skipped.update({"corrupt_image": 2})
    text = str(render_card("coco_text", report))
    assert "| train | 5 | 7 |" in text and "corrupt_image 2" in text and "- n<1K" in text


# ---------------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------------


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, status: int) -> None:
        super().__init__(data)
        self.status = status
        self.headers = {"Content-Length": str(len(data))}

    def getcode(self) -> int:
        return self.status


def range_server(payload: bytes, seen: list[Any]):
    """A fake urlopen that honours ``Range: bytes=N-``."""

    def opener(request: urllib.request.Request, timeout: float = 0) -> FakeResponse:
        rng = request.get_header("Range")
        seen.append(rng)
        if rng:
            start = int(rng.split("=")[1].rstrip("-"))
            return FakeResponse(payload[start:], 206)
        return FakeResponse(payload, 200)

    return opener


def test_download_resumes_with_range_and_checks_md5(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 100
    dest = tmp_path / "detection.tar.gz"
    (tmp_path / "detection.tar.gz.part").write_bytes(payload[:1000])  # an interrupted download
    seen: list[Any] = []
    md5 = hashlib.md5(payload).hexdigest()
    download_file("https://example.invalid/x", dest, md5=md5, opener=range_server(payload, seen))
    assert seen == ["bytes=1000-"] and dest.read_bytes() == payload
    assert (tmp_path / "detection.tar.gz.md5").read_text().split()[0] == md5
    # a server that ignores Range (200) restarts the file instead of appending
    (tmp_path / "b.part").write_bytes(b"stale")
    download_file(
        "https://example.invalid/x",
        tmp_path / "b",
        opener=lambda r, timeout=0: FakeResponse(payload, 200),
    )
    assert (tmp_path / "b").read_bytes() == payload
    with pytest.raises(DownloadError, match="md5 mismatch"):
        download_file(
            "https://example.invalid/x",
            tmp_path / "c",
            md5="0" * 32,
            opener=range_server(payload, []),
        )
    assert not (tmp_path / "c").exists()


def test_download_offline_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def offline(request, timeout=0):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    with pytest.raises(DownloadError, match="you seem to be offline") as e:
        download_minneapple(tmp_path, opener=offline)
    assert "conservancy.umn.edu" in str(e.value) and "handle/11299/206575" in str(e.value)
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    script = load_script("download_mineapple")
    assert script.main(["--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "offline" in err and "detection.tar.gz" in err


def test_hand_placed_archive_is_verified_and_extracted_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "build/detection/test/images"
    src.mkdir(parents=True)
    (src / "t.png").write_bytes(b"png")
    out = tmp_path / "data"
    out.mkdir()
    with tarfile.open(out / "detection.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "build/detection", arcname="detection")
    digest = hashlib.md5((out / "detection.tar.gz").read_bytes()).hexdigest()

    def offline(request, timeout=0):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    script = load_script("download_mineapple")
    assert script.main(["--out", str(out), "--quiet", "--md5", f"detection={digest}"]) == 0
    assert (out / "detection/test/images/t.png").read_bytes() == b"png"
    assert f"md5 {digest}" in capsys.readouterr().out
    # a hand-placed file with the wrong sum is removed, and the offline message says why
    assert script.main(["--out", str(out), "--quiet", "--md5", "detection=" + "0" * 32]) == 2
    err = capsys.readouterr().err
    assert "offline" in err and "md5 mismatch for detection.tar.gz" in err
    assert not (out / "detection.tar.gz").exists()


def test_extract_archive_and_refuse_unsafe_members(tmp_path: Path) -> None:
    src = tmp_path / "detection/train/images"
    src.mkdir(parents=True)
    (src / "a.png").write_bytes(b"png")
    archive = tmp_path / "detection.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tmp_path / "detection", arcname="detection")
    extract_archive(archive, tmp_path / "out")
    assert (tmp_path / "out/detection/train/images/a.png").read_bytes() == b"png"
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tf:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DownloadError, match="unsafe member"):
        extract_archive(evil, tmp_path / "out2")
    assert not (tmp_path / "escape.txt").exists()


def test_cli_prepare_coco_text_error_exit_code(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (W, H)).save(tmp_path / "images/a.png")
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
        "categories": [{"id": 1, "name": "apple"}],
        "annotations": [
            {"id": 5, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 6, 1, 6, 6]]}
        ],
    }
    (tmp_path / "a.json").write_text(json.dumps(doc))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    cmd = [
        sys.executable,
        "scripts/prepare_coco_text.py",
        "--images",
        str(tmp_path / "images"),
        "--annotations",
        str(tmp_path / "a.json"),
        "--out",
        str(tmp_path / "out"),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    failed = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert failed.returncode == 2
    assert "a.json: annotation id 5: missing noun_phrase" in failed.stderr
    assert not (tmp_path / "out").exists()
    ok = subprocess.run(
        cmd + ["--noun-phrase-from-category"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "train: 1 images, 1 objects" in ok.stdout
    assert (tmp_path / "out/README.md").read_text().count("| train | 1 | 1 |") == 1
