"""No command that writes a folder deletes or replaces files it did not write.

Every converter is run through its script's ``main(argv)`` on tiny inputs (the builders of
test_converters.py / test_convert_coco.py) into folders where a user has put files of their
own: a hand-labelled json and a README. Without ``--overwrite`` a folder that is not the same
command's untouched earlier output is refused (exit 2, one line naming the folder and
``--overwrite``); with ``--overwrite`` only sam_hf's outputs are replaced and every other file
survives; a re-run on our own output just works; what killed runs left beside the output
(``.<name>.tmp-*`` / ``.<name>.old-*``) is cleaned up, or put back, by the next run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import datasets
import pytest
from scripts_loader import load_script
from test_convert_coco import POLY, coco_doc, saco_doc, write_coco, write_jsonpoly
from test_converters import write_split

import sam_hf

#: The marker name the README documents (spelled out: the contract, not an import).
OUTPUT_MARKER = ".sam_hf_output.json"
HAND_LABELLED = '{"images": [{"id": 1, "file_name": "mine.png"}], "annotations": []}'
USER_README = "# my notes\nlabelled by hand over three weekends\n"

# Each converter: the arguments that read the tiny input under ``src`` and write ``out``.
PREPARE = ("prepare_mineapple", "prepare_coco_text", "prepare_json_polygons", "prepare_saco")
COMMANDS = (*PREPARE, "convert_mineapple_to_coco_text")


def args_for(name: str, src: Path, out: Path, *extra: str) -> list[str]:
    """``main(argv)`` arguments of converter ``name`` reading the tiny input under ``src``."""
    reads = {
        "prepare_mineapple": ["--source", src / "minneapple", "--val-fraction", "0", "--out"],
        "prepare_coco_text": [
            "--images",
            src / "coco/images",
            "--annotations",
            src / "coco/ann.json",
            "--out",
        ],
        "prepare_saco": [
            "--images",
            src / "saco/images",
            "--annotations",
            src / "saco/ann.json",
            "--out",
        ],
        "prepare_json_polygons": ["--source", src / "poly", "--out"],
        "convert_mineapple_to_coco_text": ["--input", src / "minneapple", "--output"],
    }[name]
    return [str(a) for a in (*reads, out, "--cache-dir", src / "cache", *extra)]


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny input per format (and a shared Arrow cache), built once for the module."""
    root = tmp_path_factory.mktemp("inputs")
    write_split(root / "minneapple", "train", 2)
    write_coco(root / "coco", coco_doc())
    write_coco(root / "saco", saco_doc())
    instance = {"instance_id": 1, "label": "apple", "segmentation": {"polygon": POLY}}
    write_jsonpoly(root / "poly", "train", "a", [instance])
    write_jsonpoly(root / "poly", "train", "b", [])
    return root


def run(name: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = load_script(name).main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def plant(folder: Path, readme: str = "README.md") -> dict[str, bytes]:
    """A user's own files in ``folder``; returns their bytes by relative path."""
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    (folder / "annotations/hand_labelled.json").write_text(HAND_LABELLED)
    (folder / readme).write_text(USER_README)
    return {"annotations/hand_labelled.json": HAND_LABELLED.encode(), readme: USER_README.encode()}


def assert_survived(folder: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        assert (folder / rel).read_bytes() == data, f"{rel} was changed or deleted"


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def assert_written(name: str, out: Path) -> None:
    """The command's outputs are complete and readable."""
    if name in PREPARE:
        assert datasets.load_from_disk(str(out))["train" if name != "prepare_saco" else "test"]
        assert (out / "README.md").read_text().startswith("---\n")  # the data card
    else:
        assert json.loads((out / "annotations/train.json").read_text())["images"]


def marker(folder: Path) -> dict:
    return json.loads((folder / OUTPUT_MARKER).read_text())


def dead_pid() -> int:
    """The pid of a process that has exited (a writer killed earlier)."""
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


# ------------------------------------------------------------------------- refusing user data


@pytest.mark.parametrize("name", PREPARE)
def test_prepare_refuses_a_folder_it_did_not_write(
    name: str, src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The user's own ``save_to_disk`` folder with their files in it: refused, all kept."""
    out = tmp_path / "mine"
    mine = plant(out)
    (out / "dataset_dict.json").write_text('{"splits": ["train"]}')  # looked "replaceable"
    mine["dataset_dict.json"] = b'{"splits": ["train"]}'
    rc, _, err = run(name, args_for(name, src, out), capsys)
    assert rc == 2
    line = error_line(err)
    assert str(out) in line and "refusing to replace it" in line
    assert f"not written by {name}" in line and OUTPUT_MARKER in line
    assert "pass --overwrite" in line and "choose another --out" in line
    assert_survived(out, mine)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "annotations",
        "dataset_dict.json",
    ]
    assert leftovers(tmp_path) == []


def test_convert_to_coco_text_refuses_a_folder_with_annotations(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reported case: a folder with an ``annotations/`` subfolder was replaced, exit 0."""
    name = "convert_mineapple_to_coco_text"
    out = tmp_path / "labelled"
    mine = plant(out)
    rc, _, err = run(name, args_for(name, src, out), capsys)
    assert rc == 2
    line = error_line(err)
    assert str(out) in line and "refusing to replace it" in line
    assert "pass --overwrite" in line and "choose another --output" in line
    assert_survived(out, mine)
    assert not (out / "images").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("name", COMMANDS)
def test_own_output_with_a_file_added_is_refused_then_kept_by_overwrite(
    name: str, src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert run(name, args_for(name, src, out), capsys)[0] == 0
    (out / "notes.txt").write_text("my notes")
    rc, _, err = run(name, args_for(name, src, out), capsys)
    assert rc == 2
    line = error_line(err)
    assert str(out) in line and f"it holds files {name} did not write (notes.txt)" in line
    assert (out / "notes.txt").read_text() == "my notes"
    rc, _, err = run(name, args_for(name, src, out, "--overwrite"), capsys)
    assert rc == 0, err
    assert (out / "notes.txt").read_text() == "my notes"
    assert "kept notes.txt" in err
    assert_written(name, out)
    assert "notes.txt" not in marker(out)["files"]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", PREPARE)
def test_own_output_with_an_edited_file_is_refused(
    name: str, src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert run(name, args_for(name, src, out), capsys)[0] == 0
    (out / "README.md").write_text(USER_README)  # the user rewrote the data card
    rc, _, err = run(name, args_for(name, src, out), capsys)
    assert rc == 2
    assert f"files changed since {name} wrote them (README.md)" in error_line(err)
    assert (out / "README.md").read_text() == USER_README
    # --overwrite: the card is sam_hf's output, so it is written again
    assert run(name, args_for(name, src, out, "--overwrite"), capsys)[0] == 0
    assert (out / "README.md").read_text().startswith("---\n")


def test_output_of_another_command_is_refused(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert run("prepare_saco", args_for("prepare_saco", src, out), capsys)[0] == 0
    name = "prepare_coco_text"
    rc, _, err = run(name, args_for(name, src, out), capsys)
    assert rc == 2
    assert "it was written by prepare_saco, not prepare_coco_text" in error_line(err)
    assert datasets.load_from_disk(str(out))["test"]  # still the SA-Co data
    assert run(name, args_for(name, src, out, "--overwrite"), capsys)[0] == 0
    assert list(datasets.load_from_disk(str(out))) == ["train"] and marker(out)["command"] == name


def test_a_file_at_the_output_path_is_refused(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "thesis.tex"
    out.write_text("do not delete")
    for extra in ((), ("--overwrite",)):
        rc, _, err = run(
            "prepare_mineapple", args_for("prepare_mineapple", src, out, *extra), capsys
        )
        assert rc == 2
        assert "exists and is not a folder; choose another --out" in error_line(err)
        assert out.read_text() == "do not delete"


# ------------------------------------------------------------------------------- re-runs


@pytest.mark.parametrize("name", COMMANDS)
def test_rerun_on_own_output_replaces_it_and_marks_it(
    name: str, src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert run(name, args_for(name, src, out), capsys)[0] == 0
    first = marker(out)
    assert first["command"] == name and first["sam_hf_version"] == sam_hf.__version__
    assert first["complete"] is True and first["time"][:2] == "20"
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert sorted(first["files"]) == [f for f in files if f != OUTPUT_MARKER]
    rc, _, err = run(name, args_for(name, src, out), capsys)
    assert rc == 0, err
    assert "note:" not in err  # nothing to report: our own, untouched output
    assert_written(name, out)
    assert sorted(marker(out)["files"]) == sorted(first["files"])
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_empty_folder_is_used_and_marked(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "made_by_mkdir"
    out.mkdir()
    assert run("prepare_mineapple", args_for("prepare_mineapple", src, out), capsys)[0] == 0
    assert_written("prepare_mineapple", out)
    assert marker(out)["command"] == "prepare_mineapple"  # a re-run may replace it now


# ------------------------------------------------------------------------------- --overwrite


@pytest.mark.parametrize("name", COMMANDS)
def test_overwrite_on_a_user_folder_adds_our_outputs_and_keeps_theirs(
    name: str, src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine"
    mine = plant(out, readme="README")  # README.md would be in the way of the data card
    rc, _, err = run(name, args_for(name, src, out, "--overwrite"), capsys)
    assert rc == 0, err
    assert_survived(out, mine)
    assert_written(name, out)
    assert f"--overwrite: wrote {name}'s outputs into {out} and kept" in err
    listed = marker(out)["files"]
    assert not set(listed) & set(mine)  # the user's files are not claimed as ours
    # a second --overwrite run replaces our outputs again and still keeps theirs
    rc, _, err = run(name, args_for(name, src, out, "--overwrite"), capsys)
    assert rc == 0 and "kept README, annotations/hand_labelled.json" in err
    assert_survived(out, mine)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", PREPARE)
def test_overwrite_never_replaces_a_user_file_in_the_way(
    name: str, src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine"
    mine = plant(out)  # README.md: where the data card goes
    rc, _, err = run(name, args_for(name, src, out, "--overwrite"), capsys)
    assert rc == 2
    line = error_line(err)
    assert str(out) in line and "refusing to overwrite README.md: not written by sam_hf" in line
    assert "move it away or choose another --out" in line
    assert_survived(out, mine)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "annotations"]


def test_overwrite_deletes_only_our_outputs_that_are_no_longer_written(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "convert_mineapple_to_coco_text"
    out = tmp_path / "coco"
    args = args_for(name, src, out)
    assert run(name, [*args, "--val-fraction", "0.5"], capsys)[0] == 0
    assert (out / "annotations/val.json").is_file() and (out / "images/val").is_dir()
    mine = plant(out, readme="README")
    assert run(name, [*args, "--overwrite"], capsys)[0] == 0  # no validation split now
    assert not (out / "annotations/val.json").exists() and not (out / "images/val").exists()
    assert (out / "annotations/train.json").is_file()
    assert_survived(out, mine)


def test_a_merge_killed_halfway_is_finished_by_the_next_overwrite(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "convert_mineapple_to_coco_text"
    out = tmp_path / "mine"
    mine = plant(out, readme="README")
    real_replace, calls = os.replace, []

    def dies_on_second_file(a, b):  # killed after moving our first file into ``out``
        if Path(b).parent.is_relative_to(out) and Path(b).name != OUTPUT_MARKER:
            calls.append(b)
            if len(calls) == 2:
                raise KeyboardInterrupt
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", dies_on_second_file)  # the merge of data/output.py
    with pytest.raises(KeyboardInterrupt):
        load_script(name).main(args_for(name, src, out, "--overwrite"))
    monkeypatch.undo()
    assert_survived(out, mine)
    assert marker(out)["complete"] is False
    rc, _, err = run(name, args_for(name, src, out), capsys)
    assert rc == 2 and "an earlier run into it was interrupted" in error_line(err)
    rc, _, err = run(name, args_for(name, src, out, "--overwrite"), capsys)
    assert rc == 0, err
    assert marker(out)["complete"] is True
    assert_survived(out, mine)
    assert_written(name, out)
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------- atomic replace, leftovers


def test_a_failed_swap_puts_the_previous_output_back(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    args = args_for("prepare_mineapple", src, out)
    assert run("prepare_mineapple", args, capsys)[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real_rename = os.rename

    def new_folder_cannot_move(a, b):  # e.g. the disk went away between the two renames
        if Path(b) == out and ".tmp-" in Path(a).name:
            raise OSError("simulated: rename failed")
        real_rename(a, b)

    monkeypatch.setattr(os, "rename", new_folder_cannot_move)  # the swap of data/leftovers.py
    with pytest.raises(OSError, match="simulated"):
        load_script("prepare_mineapple").main(args)
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert leftovers(tmp_path) == []
    assert_written("prepare_mineapple", out)


@pytest.mark.parametrize("name", ["prepare_json_polygons", "convert_mineapple_to_coco_text"])
def test_leftovers_of_a_killed_run_are_cleaned_up(
    name: str, src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert run(name, args_for(name, src, out), capsys)[0] == 0
    pid = dead_pid()
    partial = tmp_path / f".out.tmp-{pid}-k1ll3d"  # killed while writing
    partial.mkdir()
    (partial / "half.arrow").write_bytes(b"half")
    moved = tmp_path / f".out.old-{pid}-k1ll3d"  # killed after the swap, before the delete
    moved.mkdir()
    (moved / "previous").write_bytes(b"old output")
    alive = tmp_path / f".out.tmp-{os.getppid()}-busy"  # another run, still writing
    alive.mkdir()
    rc, _, err = run(name, args_for(name, src, out), capsys)
    assert rc == 0, err
    assert not partial.exists() and not moved.exists()
    assert f"removed {partial}, left by an interrupted run" in err
    assert f"removed {moved}, left by an interrupted run" in err
    assert alive.is_dir() and f"left {alive} alone: process {os.getppid()}" in err
    assert_written(name, out)


def test_run_killed_between_the_two_renames_gets_its_output_back(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed after moving the old output aside, before moving the new one in: the next run
    puts the old one back, then replaces it as usual (a user file in it is still refused)."""
    name = "prepare_coco_text"
    out = tmp_path / "out"
    assert run(name, args_for(name, src, out), capsys)[0] == 0
    (out / "notes.txt").write_text("mine")
    pid = dead_pid()
    os.rename(out, tmp_path / f".out.old-{pid}-k1ll3d")
    (tmp_path / f".out.tmp-{pid}-k1ll3d").mkdir()
    rc, _, err = run(name, args_for(name, src, out), capsys)
    assert rc == 2 and f"restored {out} from .out.old-{pid}-k1ll3d" in err
    assert (out / "notes.txt").read_text() == "mine" and leftovers(tmp_path) == []
    assert "holds files prepare_coco_text did not write (notes.txt)" in error_line(err)


# ------------------------------------------------------------- synthetic orchard, downloader


def test_make_synthetic_orchard_overwrite_keeps_user_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "make_synthetic_orchard"
    out = tmp_path / "orchard"
    args = ["--out", str(out), "--seed", "0", "--image-size", "32", "32"]
    assert run(name, [*args, "--num-images", "3"], capsys)[0] == 0
    mine = plant(out / "coco_text", readme="README")
    (out / "minneapple/notes.txt").write_text("my notes")
    rc, _, err = run(name, [*args, "--num-images", "3"], capsys)
    assert rc == 2
    line = error_line(err)
    assert "minneapple already exists" in line and "pass --overwrite" in line
    rc, _, err = run(name, [*args, "--num-images", "2", "--overwrite"], capsys)
    assert rc == 0, err
    assert_survived(out / "coco_text", mine)
    assert (out / "minneapple/notes.txt").read_text() == "my notes"
    assert "kept README, annotations/hand_labelled.json" in err and "kept notes.txt" in err
    # our files from the 3-image run that the 2-image run does not write are gone
    assert len(list((out / "coco_text/images").iterdir())) == 2
    masks = list((out / "minneapple").glob("*/masks/*.png"))
    assert len(masks) == 2
    assert leftovers(out) == [] and sorted(p.name for p in out.iterdir()) == [
        "coco_text",
        "minneapple",
    ]


def test_download_extraction_refuses_a_user_folder_and_reruns_on_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.error
    import urllib.request

    def offline(request, timeout=0):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    out = tmp_path / "raw"
    out.mkdir()
    with tarfile.open(out / "detection.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("detection/train/images/a.png")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"png"))
    digest = hashlib.md5((out / "detection.tar.gz").read_bytes()).hexdigest()
    args = ["--out", str(out), "--quiet", "--md5", f"detection={digest}"]
    user = out / "detection"
    (user / "train/images").mkdir(parents=True)
    (user / "train/images/a.png").write_bytes(b"my relabelled frame")
    (user / "README").write_text(USER_README)
    rc, _, err = run("download_mineapple", args, capsys)
    assert rc == 2 and f"{user}: refusing to replace it" in error_line(err)
    assert (user / "train/images/a.png").read_bytes() == b"my relabelled frame"
    rc, _, err = run("download_mineapple", [*args, "--overwrite"], capsys)
    assert rc == 2 and "refusing to overwrite train/images/a.png" in error_line(err)
    assert (user / "train/images/a.png").read_bytes() == b"my relabelled frame"
    # a fresh folder: extracted with a marker, and a re-run replaces its own extraction
    os.rename(user, tmp_path / "kept_by_user")
    assert run("download_mineapple", args, capsys)[0] == 0
    assert marker(user)["command"] == "download_mineapple"
    rc, _, err = run("download_mineapple", args, capsys)
    assert rc == 0, err
    assert (user / "train/images/a.png").read_bytes() == b"png" and leftovers(out) == []
