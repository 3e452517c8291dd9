"""Model cards and Hub pushes against a fake HfApi: exact files, card validation, no token leaks."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from huggingface_hub import DatasetCard, DatasetCardData, ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from huggingface_hub.utils import _http as hf_http
from huggingface_hub.utils import filter_repo_objects
from PIL import Image
from test_faults import HubToyTask
from test_lora import tiny_sam2, tiny_sam3
from toy_task import toy_config
from transformers import Sam2ImageProcessor, Sam2Model, Sam2Processor

from sam_hf.config import Sam2Config, load_config, save_config
from sam_hf.hub import cards, push
from sam_hf.models import lora
from sam_hf.training import hub_pushes
from sam_hf.training.loop import train

ROOT = Path(__file__).resolve().parents[1]
# the HTTP client module huggingface_hub's own error handling expects (httpx2, formerly httpx)
HTTP = getattr(hf_http, "httpx2", None) or hf_http.httpx
TOKEN = "hf_PLANTEDtokenNEVERtoBEwrittenXYZ123"
#: A run's all_results.json: flat keys as transformers writes them, the before/after view as
#: initial_eval_* / best_eval_*.
RESULTS = {
    "epoch": 2.0,
    "eval_mean_iou": 0.71234,
    "eval_mean_dice": 0.8,
    "eval_num_objects": 12,
    "initial_eval_mean_iou": 0.5,
    "initial_eval_mean_dice": 0.6,
    "initial_eval_num_objects": 12,
    "best_eval_mean_iou": 0.72,
    "best_global_step": 20,
    "metric_for_best_model": "eval_mean_iou",
    "global_step": 20,
    "num_processes": 2,
}
#: What final/eval_results.json holds in that run.
FINAL = {k: v for k, v in RESULTS.items() if not k.startswith(("initial_", "best_"))}


class FakeApi:
    """Records calls; ``upload_folder`` applies the real allow/ignore pattern filter."""

    def __init__(self, **kwargs):
        self.init_kwargs = kwargs
        self.calls: list[tuple[str, dict]] = []
        self.uploaded: dict[str, bytes] = {}

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kw}))
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(
        self, *, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, **kw
    ):
        self.calls.append(("upload_folder", {"repo_id": repo_id, "folder_path": folder_path, **kw}))
        root = Path(folder_path)
        prefix = f"{kw['path_in_repo']}/" if kw.get("path_in_repo") else ""
        paths = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        for rel in filter_repo_objects(
            paths, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns
        ):
            self.uploaded[prefix + rel] = (root / rel).read_bytes()
        return SimpleNamespace(repo_url=f"https://huggingface.co/{repo_id}")

    def upload_file(self, *, path_or_fileobj, path_in_repo, repo_id, **kw):
        self.calls.append(("upload_file", {"path_in_repo": path_in_repo, "repo_id": repo_id, **kw}))
        self.uploaded[path_in_repo] = Path(path_or_fileobj).read_bytes()


@pytest.fixture
def validator(monkeypatch):
    """Stands in for the Hub's /api/validate-yaml: records what ``card.validate()`` posts."""
    posted: list[dict] = []
    state = {"status": 200, "text": ""}

    class Session:
        def post(self, url, json=None, headers=None):
            posted.append({"url": url, **json})
            return HTTP.Response(
                state["status"], text=state["text"], request=HTTP.Request("POST", url)
            )

    monkeypatch.setattr("huggingface_hub.repocard.get_session", lambda: Session())
    return SimpleNamespace(posted=posted, state=state)


def sam2_processor() -> Sam2Processor:
    return Sam2Processor(image_processor=Sam2ImageProcessor(size={"height": 128, "width": 128}))


def make_run(tmp_path: Path, use_lora: bool, merge_lora: bool) -> tuple[Path, object]:
    """An output_dir laid out as the trainer leaves it (tiny SAM2, local base checkpoint)."""
    base_dir = tmp_path / "base"
    tiny_sam2().save_pretrained(base_dir)
    sam2_processor().save_pretrained(base_dir)
    out = tmp_path / "run"
    cfg = load_config(
        Sam2Config,
        None,
        {
            "model_name_or_path": str(base_dir),
            "output_dir": str(out),
            "use_lora": use_lora,
            "merge_lora": merge_lora,
            "lora_r": 4,
            "hub_model_id": "me/sam2-apples",
            "dataset_path": str(tmp_path / "data" / "mineapple"),
            "resolution": 128,
        },
    )
    final = out / "final"
    final.mkdir(parents=True)
    save_config(cfg, out / "config.yaml")
    save_config(cfg, final / "training_config.yaml")
    (out / "all_results.json").write_text(json.dumps(RESULTS))
    (final / "eval_results.json").write_text(json.dumps(FINAL))
    sam2_processor().save_pretrained(final)
    if use_lora:
        pm = lora.apply_lora(tiny_sam2(), cfg, "sam2")
        lora.save_adapter(pm, final)
        if merge_lora:
            lora.merge_to_base(pm).save_pretrained(final)
    else:
        tiny_sam2().save_pretrained(final)
    return out, cfg


def assert_token_nowhere(root: Path, *texts: str) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            assert TOKEN.encode() not in p.read_bytes(), f"token written into {p}"
    for t in texts:
        assert TOKEN not in t


# ------------------------------------------------------------------------------------ push


def test_adapter_only_push_uploads_exactly_the_adapter(tmp_path, monkeypatch, validator, caplog):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out, _ = make_run(tmp_path, use_lora=True, merge_lora=False)
    api = FakeApi()
    with caplog.at_level(logging.DEBUG):
        push.push_output(out, "me/sam2-apples-lora", private=True, api=api)
    assert set(api.uploaded) == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
        "training_config.yaml",
        "eval_results.json",
    }
    assert api.calls[0] == (
        "create_repo",
        {"repo_id": "me/sam2-apples-lora", "private": True, "exist_ok": True, "repo_type": "model"},
    )
    assert (
        api.uploaded["adapter_model.safetensors"]
        == (out / "final" / "adapter" / "adapter_model.safetensors").read_bytes()
    )
    assert json.loads(api.uploaded["eval_results.json"]) == FINAL
    card = ModelCard(api.uploaded["README.md"].decode())
    assert card.data.library_name == "peft" and "lora" in card.data.tags
    assert 'PeftModel.from_pretrained(base, "me/sam2-apples-lora")' in card.text
    # the card went through the Hub's validator (mocked) before anything was uploaded
    assert len(validator.posted) == 1
    assert validator.posted[0]["url"].endswith("/api/validate-yaml")
    assert validator.posted[0]["repoType"] == "model"
    assert validator.posted[0]["content"] == api.uploaded["README.md"].decode()
    assert_token_nowhere(tmp_path, caplog.text)


def test_merged_push_uploads_the_final_folder(tmp_path, monkeypatch, validator):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out, _ = make_run(tmp_path, use_lora=True, merge_lora=True)
    api = FakeApi()
    push.push_output(out, "me/sam2-apples", private=False, api=api)
    assert set(api.uploaded) == {
        "config.json",
        "model.safetensors",
        "processor_config.json",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "training_config.yaml",
        "eval_results.json",
        "README.md",
    }  # not peft's stub card adapter/README.md: one card, at the root
    assert api.calls[0][1]["private"] is False
    card = ModelCard(api.uploaded["README.md"].decode())
    assert card.data.library_name == "transformers"
    assert 'Sam2Model.from_pretrained("me/sam2-apples")' in card.text
    assert (out / "final" / "README.md").read_bytes() == api.uploaded["README.md"]


def test_cli_push_takes_the_token_from_the_environment_only(
    tmp_path, monkeypatch, validator, capsys, caplog
):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out, _ = make_run(tmp_path, use_lora=True, merge_lora=False)
    made: list[FakeApi] = []

    def fake_hf_api(**kwargs):
        made.append(FakeApi(**kwargs))
        return made[-1]

    monkeypatch.setattr(push, "HfApi", fake_hf_api)
    spec = importlib.util.spec_from_file_location(
        "push_to_hub", ROOT / "scripts" / "push_to_hub.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with caplog.at_level(logging.DEBUG):
        rc = script.main(
            [str(out), "--repo-id", "me/sam2-apples-lora", "--dataset-repo-id", "me/apples"]
        )
    assert rc == 0
    (api,) = made
    assert api.init_kwargs == {
        "token": None
    }  # huggingface_hub resolves HF_TOKEN / the login itself
    assert "adapter_model.safetensors" in api.uploaded and "config.json" not in api.uploaded
    card = ModelCard(api.uploaded["README.md"].decode())
    assert card.data.datasets == ["me/apples"]
    assert "https://huggingface.co/datasets/me/apples" in card.text
    captured = capsys.readouterr()
    assert "me/sam2-apples-lora" in captured.out
    assert_token_nowhere(tmp_path, captured.out, captured.err, caplog.text)


def test_push_without_any_token_says_how_to_log_in(tmp_path, monkeypatch, validator):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(push, "get_token", lambda: None)
    out, _ = make_run(tmp_path, use_lora=False, merge_lora=False)
    with pytest.raises(RuntimeError, match="hf auth login"):
        push.push_output(out, "me/sam2-apples")


def test_push_refuses_a_run_without_the_expected_folder(tmp_path, validator):
    out, _ = make_run(tmp_path, use_lora=True, merge_lora=False)
    with pytest.raises(FileNotFoundError, match="holds no model"):
        push.push_output(out, "me/x", api=FakeApi(), adapter_only=False)
    with pytest.raises(FileNotFoundError, match="has the run finished"):
        push.push_output(out, "me/x", api=FakeApi(), model_subdir="best")


# ------------------------------------------------------------------------ hub_strategy


@pytest.mark.parametrize(
    "strategy, pushed",
    [
        ("end", ["sam_hf: final model at step 4"]),
        (
            "every_save",
            ["sam_hf: model at step 2", "sam_hf: model at step 4", "sam_hf: final model at step 4"],
        ),
        (
            "checkpoint",
            [
                "sam_hf: model at step 2",
                "sam_hf: checkpoint-2 as last-checkpoint/",
                "sam_hf: model at step 4",
                "sam_hf: checkpoint-4 as last-checkpoint/",
                "sam_hf: final model at step 4",
            ],
        ),
        (
            "all_checkpoints",
            [
                "sam_hf: model at step 2",
                "sam_hf: checkpoint-2 as checkpoint-2/",
                "sam_hf: model at step 4",
                "sam_hf: checkpoint-4 as checkpoint-4/",
                "sam_hf: final model at step 4",
            ],
        ),
    ],
)
def test_hub_strategy_pushes_what_transformers_does(
    strategy, pushed, tmp_path, monkeypatch, validator
):
    """A 4-step toy run saving at steps 2 and 4 against a fake Hub: ``end`` pushes final/
    once; ``every_save`` also the model at every save; ``checkpoint`` also the latest
    checkpoint as last-checkpoint/ (replacing the previous one: resumable from the Hub);
    ``all_checkpoints`` every checkpoint-N/ as itself."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    api = FakeApi()
    monkeypatch.setattr(push, "HfApi", lambda **kw: api)
    monkeypatch.setattr(hub_pushes, "HfApi", lambda **kw: api)
    out = tmp_path / "run"
    cfg = toy_config(
        out,
        *("--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2"),
        *("--eval_on_start", "false", "--push_to_hub", "true", "--hub_model_id", "me/toy"),
        *("--hub_strategy", strategy),
    )
    res = train(cfg, HubToyTask())
    assert res["hub_push_failures"] == []
    uploads = [kw for name, kw in api.calls if name == "upload_folder"]
    assert [kw["commit_message"] for kw in uploads] == pushed
    assert all(kw["repo_id"] == "me/toy" for kw in uploads)
    # the repo root holds the final model with its card, as final/ does
    for name in ("config.json", "model.safetensors", "README.md", "training_config.yaml"):
        assert api.uploaded[name] == (out / "final" / name).read_bytes(), name
    folders = {k.split("/")[0] for k in api.uploaded if "/" in k}
    checkpoints = [kw for kw in uploads if kw.get("path_in_repo")]
    if strategy == "checkpoint":
        assert folders == {"last-checkpoint"}
        assert all(kw["delete_patterns"] == ["*"] for kw in checkpoints)  # replaced, not merged
        state = json.loads(api.uploaded["last-checkpoint/trainer_state.json"])
        assert state["global_step"] == 4
        assert "last-checkpoint/optimizer.bin" in api.uploaded
    elif strategy == "all_checkpoints":
        assert folders == {"checkpoint-2", "checkpoint-4"}
        for step in (2, 4):
            local = out / f"checkpoint-{step}" / "model.safetensors"
            assert api.uploaded[f"checkpoint-{step}/model.safetensors"] == local.read_bytes()
    else:
        assert folders == set() and checkpoints == []
    assert not (out / hub_pushes.STAGING).exists()
    assert_token_nowhere(out)


# ------------------------------------------------------------------------------------ card


def test_card_metadata_table_and_hub_validation(tmp_path, validator):
    out, cfg = make_run(tmp_path, use_lora=False, merge_lora=False)
    card = cards.make_model_card(
        out, cfg, RESULTS, "sam2", "https://huggingface.co/datasets/me/apples", repo_id="me/m"
    )
    cards.check_card(card)
    reparsed = ModelCard(str(card))
    assert reparsed.data.to_dict() == card.data.to_dict()
    assert reparsed.data.pipeline_tag == "mask-generation"
    assert reparsed.data.datasets == ["me/apples"]
    assert reparsed.data.base_model is None  # a local folder is no Hub base model
    _, results = model_index_to_eval_results(reparsed.data.to_dict()["model-index"])
    assert {r.metric_type: r.metric_value for r in results} == {
        "mean_iou": 0.71234,
        "mean_dice": 0.8,
    }
    assert "| mean_iou | 0.5000 | 0.7123 | +0.2123 |" in card.text
    assert "| num_objects | 12 | 12 | +0 |" in card.text
    assert "Best mean_iou during training: 0.7200 at step 20" in card.text
    assert (out / "config.yaml").read_text().strip() in card.text  # the resolved YAML, verbatim
    assert "recipes/sam2_mineapple.py" in card.text

    card.validate()
    assert validator.posted[-1]["content"] == str(card)
    validator.state.update(status=400, text='"license" must be one of [...]')
    with pytest.raises(ValueError, match="license"):
        card.validate()


def test_card_names_hub_base_model_and_its_license(tmp_path):
    cfg = {
        "family": "sam3",
        "model_name_or_path": "facebook/sam3",
        "use_lora": True,
        "merge_lora": False,
    }
    card = cards.make_model_card(tmp_path, cfg, {}, None, repo_id="me/sam3-apples")
    assert card.data.base_model == "facebook/sam3"
    assert card.data.license == "other" and card.data.license_name == "sam-license"
    assert "No evaluation results were found" in card.text
    assert 'Sam3Model.from_pretrained("facebook/sam3")' in card.text
    assert 'text="apple"' in card.text
    cfg2 = {"family": "sam2", "model_type": "sam2.1-hiera-tiny"}
    card2 = cards.make_model_card(tmp_path, cfg2, {}, None, repo_id="me/s")
    assert card2.data.base_model == "facebook/sam2.1-hiera-tiny"
    assert card2.data.license == "apache-2.0"
    with pytest.raises(ValueError, match="expected one of"):
        cards.usage_snippet("sam1", "me/x", False, "b")


def _run_snippet(code: str, cwd: Path, monkeypatch) -> dict:
    monkeypatch.chdir(cwd)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(cwd / "image.jpg")
    scope: dict = {}
    exec(compile(code, "usage_snippet", "exec"), scope)  # noqa: S102 - our own generated code
    return scope


def test_sam2_usage_snippets_run(tmp_path, monkeypatch):
    out, _ = make_run(tmp_path, use_lora=True, merge_lora=True)
    final = out / "final"
    code = cards.usage_snippet("sam2", str(final), False, "unused")
    scope = _run_snippet(code, tmp_path, monkeypatch)
    assert isinstance(scope["model"], Sam2Model)
    assert tuple(scope["masks"].shape) == (1, 1, 96, 128) and scope["masks"].dtype == torch.bool

    code = cards.usage_snippet("sam2", str(final / "adapter"), True, str(tmp_path / "base"))
    scope = _run_snippet(code, tmp_path, monkeypatch)
    assert type(scope["model"]) is Sam2Model  # merged back into a plain model
    assert tuple(scope["masks"].shape) == (1, 1, 96, 128)


def test_sam3_usage_snippet_runs(tmp_path, monkeypatch):
    clip = pytest.importorskip("sam_hf.data.tokenizer")
    from transformers import Sam3ImageProcessor, Sam3Processor

    repo = tmp_path / "sam3"
    tiny_sam3(vocab_size=49408).save_pretrained(repo)
    tok = clip.build_clip_tokenizer(cache_dir=tmp_path / "clip")
    Sam3Processor(
        image_processor=Sam3ImageProcessor(size={"height": 224, "width": 224}), tokenizer=tok
    ).save_pretrained(repo)
    code = cards.usage_snippet(
        "sam3", str(repo), False, "unused", example_phrase="red apple", score_threshold=0.0
    )
    assert 'text="red apple"' in code
    scope = _run_snippet(code, tmp_path, monkeypatch)
    res = scope["results"]  # threshold 0: every one of the 5 queries of the random model
    assert tuple(res["masks"].shape) == (5, 96, 128)
    assert tuple(res["scores"].shape) == (5,)


# ------------------------------------------------------------------------------- datasets


def make_prepared_dataset(folder: Path, with_card: bool = True) -> None:
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"image_id": ["a", "b"]}),
            "validation": datasets.Dataset.from_dict({"image_id": ["c"]}),
        }
    )
    dd.save_to_disk(str(folder))
    if with_card:
        card = DatasetCard.from_template(
            DatasetCardData(license="cc-by-4.0", pretty_name="Tiny apples"),
            template_str="---\n{{ card_data }}\n---\n\n# Tiny apples\n\nA data card.\n",
        )
        card.save(folder / "README.md")


def test_push_dataset_uploads_card_then_data(tmp_path, monkeypatch, validator):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    folder = tmp_path / "apples"
    make_prepared_dataset(folder)
    pushed: list[dict] = []

    def fake_push(self, repo_id, **kw):
        pushed.append({"repo_id": repo_id, "splits": dict(self.num_rows), **kw})

    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", fake_push)
    api = FakeApi()
    assert push.push_dataset(folder, "me/apples", private=True, api=api) == "me/apples"
    assert [c[0] for c in api.calls] == ["create_repo", "upload_file"]
    assert api.calls[0][1]["repo_type"] == "dataset" and api.calls[0][1]["private"] is True
    assert api.uploaded == {"README.md": (folder / "README.md").read_bytes()}
    assert pushed == [
        {
            "repo_id": "me/apples",
            "splits": {"train": 2, "validation": 1},
            "private": True,
            "token": None,
        }
    ]
    assert validator.posted[-1]["repoType"] == "dataset"
    assert_token_nowhere(tmp_path)

    bare = tmp_path / "bare"
    make_prepared_dataset(bare, with_card=False)
    with pytest.raises(FileNotFoundError, match="no data card"):
        push.push_dataset(bare, "me/bare", api=FakeApi())
