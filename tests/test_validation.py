"""Nothing lost, nothing silently wrong: every bad config value, missing model, wrong model
family and Hub failure ends in one ConfigError line (or exit 2 and one line for the scripts),
naming what is wrong and how to fix it. All cases are fast: tiny configs, no weights loaded,
Hub calls replaced by the real huggingface_hub exception classes."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import _http as hf_http
from scripts_loader import load_script
from transformers import Sam2Model, Sam3Model, Sam3TrackerModel

from sam_hf.config import (
    ConfigError,
    Sam2Config,
    Sam3Config,
    load_config,
    parse_args,
    save_config,
)
from sam_hf.config.validate import family_name
from sam_hf.hub import push as hub
from sam_hf.models import loading
from sam_hf.models.sam2 import build_sam2
from sam_hf.models.sam3 import build_sam3
from sam_hf.models.sam3_tracker import build_sam3_tracker
from sam_hf.recipe import cli

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "sam_hf" / "assets" / "checkpoints"
# the HTTP client module huggingface_hub raises its errors with (httpx2, formerly httpx)
HTTP = getattr(hf_http, "httpx2", None) or hf_http.httpx


def _float_keys(cls: type) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if hints[f.name] in (float, float | None)]


FLOAT_CASES = [
    pytest.param(cls, key, value, id=f"{cls.__name__}-{key}-{value}")
    for cls in (Sam2Config, Sam3Config)
    for key in _float_keys(cls)
    for value in ("inf", "-inf", "nan")
]


def test_the_float_keys_are_found():
    keys = set(_float_keys(Sam2Config)) | set(_float_keys(Sam3Config))
    assert {"learning_rate", "max_grad_norm", "loss_focal", "loss_segmentation"} <= keys
    assert len(FLOAT_CASES) == 3 * (len(_float_keys(Sam2Config)) + len(_float_keys(Sam3Config)))


# ----------------------------------------------------------------------- numbers


@pytest.mark.parametrize(("cls", "key", "value"), FLOAT_CASES)
def test_every_float_key_refuses_inf_and_nan(cls, key, value):
    with pytest.raises(ConfigError, match=rf"^{key} must be a finite number, got {value}\.$"):
        parse_args(cls, [f"--{key}", value])


def test_non_finite_numbers_in_yaml_and_in_mappings(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("learning_rate: .inf\n")
    with pytest.raises(ConfigError, match=r"^learning_rate must be a finite number, got inf\.$"):
        load_config(Sam2Config, y)
    for text, got in (("{boundary: .inf}", "inf"), ("{boundary: .nan}", "nan")):
        with pytest.raises(
            ConfigError, match=rf"^extra_loss_weights\.boundary must be a finite number, got {got}"
        ):
            parse_args(Sam2Config, ["--extra_loss_weights", text])


def test_max_grad_norm_must_be_finite_and_not_negative():
    with pytest.raises(ConfigError, match=r"max_grad_norm must be >= 0 \(0 disables clipping\)"):
        parse_args(Sam2Config, ["--max_grad_norm", "-1"])
    assert parse_args(Sam2Config, ["--max_grad_norm", "0"]).max_grad_norm == 0.0


@pytest.mark.parametrize("key", ["loss_grounding", "cost_bbox", "weight_mask_focal"])
def test_sam3_loss_weights_must_not_be_negative(key):
    with pytest.raises(ConfigError, match=rf"^{key} must be >= 0, got -1.0\.$"):
        parse_args(Sam3Config, [f"--{key}", "-1"])


# ----------------------------------------------------------------------- SAM3 vs SAM2 keys


def test_sam3_refuses_model_type_and_says_what_it_accepts():
    with pytest.raises(ConfigError) as e:
        parse_args(Sam3Config, ["--model_type", "sam2.1-hiera-large"])
    msg = str(e.value)
    assert "Unknown config key 'model_type'" in msg
    assert "key of the SAM2 recipe (recipes/sam2_mineapple.py)" in msg
    assert "model_name_or_path, which accepts a Hub id (e.g. facebook/sam3)" in msg
    assert "local folder with config.json" in msg and "sam3-tiny" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("cls", "name", "other"),
    [
        (Sam3Config, "sam2-tiny", "SAM2 recipe \\(recipes/sam2_mineapple.py\\)"),
        (Sam3Config, "facebook/sam2.1-hiera-large", "SAM2 recipe"),
        (Sam2Config, "sam3-tiny", "SAM3 recipe \\(recipes/sam3_coco_text.py\\)"),
        (Sam2Config, "facebook/sam3", "SAM3 recipe"),
    ],
)
def test_a_name_of_the_other_family_is_refused_by_the_config(cls, name, other):
    with pytest.raises(ConfigError, match=rf"'{name}' is a SAM. checkpoint; .*{other}"):
        parse_args(cls, ["--model_name_or_path", name])


def test_a_local_folder_of_the_other_family_is_refused_by_the_config():
    with pytest.raises(ConfigError, match=r"holds a 'sam2' model, not SAM3.*SAM2 recipe"):
        parse_args(Sam3Config, ["--model_name_or_path", str(CHECKPOINTS / "sam2-tiny-shapes")])
    with pytest.raises(ConfigError, match=r"holds a 'sam3' model, not SAM2.*SAM3 recipe"):
        parse_args(Sam2Config, ["--model_name_or_path", str(CHECKPOINTS / "sam3-tiny-shapes")])


# ----------------------------------------------------------------------- YAML and --resume_from_checkpoint


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("learning_rate: 1.0e-4\nreport_to: [none\nseed: 3\n", ":3:5:", "expected ',' or ']'"),
        ("learning_rate: 1.0e-4\nbatch_size: 2: 3\n", ":2:14:", "mapping values are not allowed"),
        ("seed: 1\n\tbatch_size: 2\n", ":2:1:", "found character '\\t' that cannot start"),
    ],
)
def test_yaml_that_does_not_parse_names_file_line_and_column(tmp_path, text, where, problem):
    y = tmp_path / "broken.yaml"
    y.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(Sam2Config, y)
    msg = str(e.value)
    assert msg.startswith(f"{y}{where} not valid YAML: "), msg
    assert problem in msg
    assert "\n" not in msg


def test_a_cli_mapping_that_does_not_parse_is_a_config_error():
    with pytest.raises(ConfigError, match=r"extra_loss_weights: '\{a: 1' does not parse as YAML"):
        parse_args(Sam2Config, ["--extra_loss_weights", "{a: 1"])


def test_resume_path_that_does_not_exist_lists_the_checkpoints(tmp_path):
    out = tmp_path / "run"
    for step in (20, 100):
        (out / f"checkpoint-{step}").mkdir(parents=True)
    missing = out / "checkpoint-50"
    with pytest.raises(ConfigError) as e:
        parse_args(Sam2Config, ["--output_dir", str(out), "--resume_from_checkpoint", str(missing)])
    msg = str(e.value)
    assert msg.startswith(f"resume_from_checkpoint: {missing} does not exist; checkpoints in {out}")
    assert msg.index("checkpoint-20") < msg.index("checkpoint-100")  # by step, not by name
    assert "--resume_from_checkpoint true" in msg
    with pytest.raises(ConfigError, match=r"there are no checkpoint-N folders in .*empty"):
        parse_args(
            Sam3Config,
            ["--output_dir", str(tmp_path / "empty"), "--resume_from_checkpoint", str(missing)],
        )
    # an existing path and true pass (what the path holds is checked when training starts)
    assert (
        parse_args(
            Sam2Config, ["--output_dir", str(out), "--resume_from_checkpoint", "true"]
        ).resume_from_checkpoint
        == "true"
    )
    ok = str(out / "checkpoint-20")
    assert (
        parse_args(
            Sam2Config, ["--output_dir", str(out), "--resume_from_checkpoint", ok]
        ).resume_from_checkpoint
        == ok
    )


@pytest.mark.parametrize(
    ("recipe", "args", "message"),
    [
        (
            "sam3_coco_text",
            ["--model_name_or_path", str(CHECKPOINTS / "sam2-tiny-shapes")],
            "holds a 'sam2' model, not SAM3",
        ),
        (
            "sam3_coco_text",
            ["--model_type", "sam2.1-hiera-tiny"],
            "The SAM3 recipe has no model_type: it takes its checkpoint from model_name_or_path",
        ),
        ("sam2_mineapple", ["--learning_rate", "inf"], "learning_rate must be a finite number"),
        (
            "sam2_mineapple",
            ["--resume_from_checkpoint", "no/such/checkpoint-3"],
            "resume_from_checkpoint: no/such/checkpoint-3 does not",
        ),
    ],
)
def test_recipes_exit_2_with_one_line(recipe, args, message, capsys):
    module = load_script(recipe, "recipes")
    with pytest.raises(SystemExit) as e:
        demo = ROOT / "recipes" / f"{recipe.split('_')[0]}_demo.yaml"
        cli(lambda: module.main(["--config", str(demo), *args]))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("Config error: ") and message in err


def test_recipe_with_a_broken_yaml_exits_2_with_one_line(tmp_path, capsys):
    y = tmp_path / "mine.yaml"
    y.write_text("model_name_or_path: sam2-tiny\nlearning_rate 1e-4\nbatch_size: 2\n")
    module = load_script("sam2_mineapple", "recipes")
    with pytest.raises(SystemExit) as e:
        cli(lambda: module.main(["--config", str(y)]))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"Config error: {y}:3:1: not valid YAML: could not find expected ':'")
    assert "simple key that starts at line 2, column 1" in err
    assert len(err.splitlines()) == 1


# ----------------------------------------------------------------------- model building


def sam2_cfg(**kw) -> SimpleNamespace:
    base = dict(
        model_name_or_path="sam2-tiny",
        model_type=None,
        revision="main",
        resolution=64,
        seed=0,
        freeze_image_encoder=False,
        freeze_prompt_encoder=False,
        freeze_mask_decoder=False,
    )
    return SimpleNamespace(**{**base, **kw})


def sam3_cfg(**kw) -> SimpleNamespace:
    base = dict(
        model_name_or_path="sam3-tiny",
        revision="main",
        resolution=56,
        seed=0,
        freeze_tracker=True,
        freeze_vision_encoder=False,
        freeze_text_encoder=False,
        gradient_checkpointing=False,
    )
    return SimpleNamespace(**{**base, **kw})


def tracker_cfg(**kw) -> SimpleNamespace:
    base = dict(
        model_name_or_path="sam3-tracker-tiny",
        revision="main",
        resolution=56,
        seed=0,
        freeze_image_encoder=False,
        freeze_prompt_encoder=False,
        freeze_mask_decoder=False,
    )
    return SimpleNamespace(**{**base, **kw})


BUILDERS = {
    "sam2": (build_sam2, sam2_cfg),
    "sam3": (build_sam3, sam3_cfg),
    "sam3_tracker": (build_sam3_tracker, tracker_cfg),
}
ACCEPTS = {
    "sam2": "It accepts a Hub id (e.g. facebook/sam2.1-hiera-large), a local folder with "
    "config.json (save_pretrained output), an official SAM2 .pt checkpoint, or a small random "
    "config (sam2-tiny, sam2-mini, sam2-mini-wide).",
    "sam3": "It accepts a Hub id (e.g. facebook/sam3), a local folder with config.json "
    "(save_pretrained output), an official SAM3 .pt checkpoint (sam3.pt), or a small random "
    "config (sam3-tiny, sam3-mini).",
    "sam3_tracker": "It accepts a Hub id (e.g. facebook/sam3: its tracker head), a local folder "
    "with config.json (Sam3TrackerModel save_pretrained output), an official SAM3 .pt checkpoint "
    "(sam3.pt: its tracker), or a small random config (sam3-tracker-tiny, sam3-tracker-mini).",
}


@pytest.fixture
def no_weights(monkeypatch):
    """Fail loudly if anything tries to read weights: the checks must come first."""

    def refuse(*a, **k):
        raise AssertionError("weights were loaded before config.json was checked")

    monkeypatch.setattr(Sam2Model, "from_pretrained", refuse)
    monkeypatch.setattr(Sam3Model, "from_pretrained", refuse)
    monkeypatch.setattr(Sam3TrackerModel, "from_pretrained", refuse)


def _build(family: str, name: str):
    build, make = BUILDERS[family]
    return build(make(model_name_or_path=name))


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("family", ["sam2", "sam3", "sam3_tracker"])
def test_missing_local_folder(family, tmp_path, no_weights):
    name = str(tmp_path / "outputs" / "run" / "final")
    with pytest.raises(ConfigError) as e:
        _build(family, name)
    assert _one_line(e) == (
        f"model_name_or_path {name!r}: no such file or folder (not found locally). "
        + ACCEPTS[family]
    )


@pytest.mark.parametrize("family", ["sam2", "sam3", "sam3_tracker"])
def test_hub_id_not_cached_while_offline(family, monkeypatch, tmp_path, no_weights):
    # the real hf_hub_download in offline mode, on an empty cache
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError) as e:
        _build(family, "nobody/no-such-model")
    msg = _one_line(e)
    assert msg.startswith(
        "model_name_or_path 'nobody/no-such-model': not found locally and the Hub is offline "
        "(HF_HUB_OFFLINE=1): unset HF_HUB_OFFLINE"
    )
    assert msg.endswith(ACCEPTS[family])


def _response(status: int) -> object:
    url = "https://huggingface.co/api/models/nobody/no-such-model"
    return HTTP.Response(status, text="{}", request=HTTP.Request("GET", url))


def _raising(exc: Exception):
    def fake(*a, **k):
        raise exc

    return fake


def _no_network() -> Exception:
    try:
        raise HTTP.ConnectError("[Errno -2] Name or service not known")
    except HTTP.ConnectError as cause:
        try:
            raise hf_errors.LocalEntryNotFoundError(
                "An error happened while trying to locate the file on the Hub and we cannot "
                "find the requested files in the local cache."
            ) from cause
        except hf_errors.LocalEntryNotFoundError as e:
            return e


HUB_FAILURES = {
    "no-network": (
        _no_network,
        "not found locally and the Hub could not be reached ([Errno -2] Name or service not "
        "known): check the network",
    ),
    "not-on-hub": (
        lambda: hf_errors.RepositoryNotFoundError("404 Client Error.", response=_response(404)),
        "not found locally and not found on the Hub",
    ),
    "gated": (
        lambda: hf_errors.GatedRepoError("403 Client Error.", response=_response(403)),
        "is gated on the Hub: accept its license at https://huggingface.co/nobody/no-such-model "
        "and log in with `hf auth login`",
    ),
    "unauthorized": (
        lambda: hf_errors.HfHubHTTPError("401 Client Error.", response=_response(401)),
        "the Hub refused access (HTTP 401); log in with `hf auth login`",
    ),
    "no-config": (
        lambda: hf_errors.RemoteEntryNotFoundError("404 Entry", response=_response(404)),
        "this Hub repo has no config.json",
    ),
}


@pytest.mark.parametrize("family", ["sam2", "sam3", "sam3_tracker"])
@pytest.mark.parametrize("case", sorted(HUB_FAILURES))
def test_hub_failures_are_one_line(family, case, monkeypatch, no_weights):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    make_exc, expected = HUB_FAILURES[case]
    monkeypatch.setattr(loading, "hf_hub_download", _raising(make_exc()))
    with pytest.raises(ConfigError) as e:
        _build(family, "nobody/no-such-model")
    msg = _one_line(e)
    assert msg.startswith("model_name_or_path 'nobody/no-such-model'"), msg
    assert expected in msg


@pytest.mark.parametrize(
    ("family", "model_type", "expected"),
    [
        (
            "sam3",
            "sam2",
            "holds a 'sam2' model, not SAM3 (config.json model_type must be one of ['sam3', "
            "'sam3_video']). Use the SAM2 recipe (recipes/sam2_mineapple.py) for SAM2 checkpoints.",
        ),
        ("sam3", "sam2_video", "holds a 'sam2_video' model, not SAM3"),
        (
            "sam2",
            "sam3",
            "holds a 'sam3' model, not SAM2 (config.json model_type must be one of ['sam2', "
            "'sam2_video']). Use the SAM3 recipe (recipes/sam3_coco_text.py) for SAM3 checkpoints.",
        ),
        ("sam2", "sam3_video", "Use the SAM3 recipe (recipes/sam3_coco_text.py)"),
        ("sam2", "sam", "That is SAM1 (ViT)"),
        ("sam3", "bert", "holds a 'bert' model, not SAM3"),
        ("sam2", "bert", "sam_hf trains SAM2 (recipes/sam2_mineapple.py), SAM3"),
        ("sam3_tracker", "sam2", "Use the SAM2 recipe (recipes/sam2_mineapple.py)"),
        ("sam3_tracker", "sam3", "Use the SAM3 recipe (recipes/sam3_coco_text.py)"),
        (
            "sam2",
            "sam3_tracker",
            "Use the SAM3 tracker recipe (recipes/sam3_tracker_mineapple.py) for SAM3 tracker",
        ),
    ],
)
def test_wrong_family_is_refused_before_any_weights(
    family, model_type, expected, tmp_path, monkeypatch, no_weights
):
    local = tmp_path / "model"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(ConfigError) as e:
        _build(family, str(local))
    msg = _one_line(e)
    assert msg.startswith(f"{local} holds a {model_type!r} model, not {family_name(family)}"), msg
    assert expected in msg
    # the same config.json behind a Hub id: only config.json is fetched, then refused
    monkeypatch.setattr(loading, "hf_hub_download", lambda *a, **k: str(local / "config.json"))
    with pytest.raises(ConfigError, match="not SAM"):
        _build(family, "someone/other-model")


def test_sam3_given_the_shipped_sam2_checkpoint(monkeypatch):
    """Was: AttributeError: 'Sam2HieraDetConfig' object has no attribute 'patch_size'."""
    with pytest.raises(ConfigError, match=r"holds a 'sam2' model, not SAM3.*SAM2 recipe"):
        build_sam3(sam3_cfg(model_name_or_path=str(CHECKPOINTS / "sam2-tiny-shapes")))
    with pytest.raises(ConfigError, match=r"holds a 'sam3' model, not SAM2.*SAM3 recipe"):
        build_sam2(sam2_cfg(model_name_or_path=str(CHECKPOINTS / "sam3-tiny-shapes")))


def test_sam3_tiny_name_of_sam2_and_single_files(tmp_path, no_weights):
    with pytest.raises(ConfigError, match=r"'sam2-tiny' is a SAM2 checkpoint.*sam3-tiny"):
        build_sam3(sam3_cfg(model_name_or_path="sam2-tiny"))
    pt = tmp_path / "sam3.pt"
    pt.write_bytes(b"")  # a .pt is read as an official checkpoint: this one is not one
    with pytest.raises(ConfigError, match=r"sam3\.pt: could not be read as a checkpoint"):
        build_sam3(sam3_cfg(model_name_or_path=str(pt)))
    single = tmp_path / "model.safetensors"
    single.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"model\.safetensors is a single file; SAM3 loads from"):
        build_sam3(sam3_cfg(model_name_or_path=str(single)))
    with pytest.raises(ConfigError, match=r"has no config\.json"):
        build_sam3(sam3_cfg(model_name_or_path=str(tmp_path)))


# ----------------------------------------------------------------------- push_to_hub.py


def _minimal_run(tmp_path: Path) -> Path:
    """A finished run as push_output reads it (config.json stands in for the weights)."""
    out = tmp_path / "run"
    final = out / "final"
    final.mkdir(parents=True)
    cfg = load_config(Sam2Config, None, {"model_name_or_path": "sam2-tiny", "output_dir": str(out)})
    save_config(cfg, out / "config.yaml")
    save_config(cfg, final / "training_config.yaml")
    (final / "config.json").write_text(json.dumps({"model_type": "sam2"}))
    (out / "eval_results.json").write_text(json.dumps({"eval_mean_iou": 0.5}))
    return out


class FailingApi:
    def __init__(self, exc: Exception, where: str):
        self.exc, self.where = exc, where

    def create_repo(self, repo_id, **kw):
        if self.where == "create_repo":
            raise self.exc
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, **kw):
        raise self.exc


def _permission_error() -> Exception:
    return PermissionError(13, "Permission denied", "/runs/final/model.safetensors")


PUSH_FAILURES = {
    "network": (
        lambda: HTTP.ConnectError("[Errno -2] Name or service not known"),
        "create_repo",
        "cannot push to me/sam2-apples: the Hub could not be reached ([Errno -2] Name or "
        "service not known); check the network or proxy",
    ),
    "unauthorized": (
        lambda: hf_errors.HfHubHTTPError("401 Client Error.", response=_response(401)),
        "create_repo",
        "the Hub refused me/sam2-apples (HTTP 401: not logged in, or the token is invalid or "
        "expired); log in with `hf auth login` (formerly `huggingface-cli login`)",
    ),
    "forbidden": (
        lambda: hf_errors.HfHubHTTPError("403 Forbidden.", response=_response(403)),
        "upload_folder",
        "the Hub refused to write to me/sam2-apples (HTTP 403: this token has no write access "
        "to it); use a token with write permission",
    ),
    "not-found": (
        lambda: hf_errors.RepositoryNotFoundError("404 Client Error.", response=_response(404)),
        "upload_folder",
        "me/sam2-apples was not found on the Hub, or this token cannot see it: check --repo-id",
    ),
    "permission": (
        _permission_error,
        "upload_folder",
        "cannot push to me/sam2-apples: permission denied on /runs/final/model.safetensors",
    ),
    "server": (
        lambda: hf_errors.HfHubHTTPError("502 Bad Gateway.", response=_response(502)),
        "upload_folder",
        "pushing to me/sam2-apples failed: the Hub answered HTTP 502 (502 Bad Gateway.)",
    ),
}


def _push(tmp_path, capsys, *extra) -> tuple[int, str]:
    script = load_script("push_to_hub")
    out = _minimal_run(tmp_path)
    rc = script.main([str(out), "--repo-id", "me/sam2-apples", *extra])
    return rc, capsys.readouterr().err


def _assert_one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("push_to_hub:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_push_offline_is_one_line(tmp_path, monkeypatch, capsys):
    """The real card validator, in huggingface_hub's offline mode."""
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc, err = _push(tmp_path, capsys)
    assert rc == 2
    assert _assert_one_line(err) == (
        "push_to_hub: cannot push to me/sam2-apples: the Hub is offline (HF_HUB_OFFLINE=1 is "
        "set); unset HF_HUB_OFFLINE on a machine with network and run this again."
    )


@pytest.mark.parametrize("case", sorted(PUSH_FAILURES))
def test_push_failures_are_one_line(case, tmp_path, monkeypatch, capsys):
    make_exc, where, expected = PUSH_FAILURES[case]
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub, "get_token", lambda: "hf_fake")
    monkeypatch.setattr(hub, "HfApi", lambda **kw: FailingApi(make_exc(), where))
    rc, err = _push(tmp_path, capsys, "--no-validate")
    assert rc == 2
    line = _assert_one_line(err)
    assert line.startswith("push_to_hub: ") and expected in line, line


def test_push_unexpected_errors_still_raise(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hub, "get_token", lambda: "hf_fake")
    monkeypatch.setattr(hub, "HfApi", lambda **kw: FailingApi(KeyError("bug"), "create_repo"))
    with pytest.raises(KeyError):
        _push(tmp_path, capsys, "--no-validate")
