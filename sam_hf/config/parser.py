"""The recipe command line: ``[--config FILE.yaml] [--key value ...]`` through HfArgumentParser.

The YAML sets the values and the command line overrides them (TRL's ``TrlParser`` pattern).
``HfArgumentParser`` gives what users of transformers' scripts type: ``--bf16`` alone means
true, ``--no_eval_on_start``, ``--report_to wandb tensorboard``, choices and defaults in
``--help``. Its errors become a ConfigError (printed once by rank 0, no usage dump per rank).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
import typing
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from sam_hf.config.args import SECTIONS
from sam_hf.config.errors import ConfigError
from sam_hf.config.values import _coerce, read_yaml, unknown_key_error, yaml_values

_EPILOG = (
    "Every key can also be set in the YAML. Names shared with transformers' TrainingArguments "
    "mean the same thing there."
)


class ConfigParser(HfArgumentParser):
    """HfArgumentParser over one flat config class, grouped by its sections for ``--help``."""

    def __init__(self, config_cls: type, prog: str | None = None) -> None:
        super().__init__(
            dataclass_types=[],
            prog=prog,
            description=(config_cls.__doc__ or "").strip(),
            epilog=_EPILOG,
            allow_abbrev=False,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        self.config_cls = config_cls
        self.hints = typing.get_type_hints(config_cls)
        self.add_argument(
            "--config",
            metavar="FILE.yaml",
            help="YAML with the run's values (default: the YAML beside the recipe).",
        )
        for section in SECTIONS.get(config_cls, (config_cls,)):
            group = self.add_argument_group(section.__name__, (section.__doc__ or "").strip())
            for f in dataclasses.fields(section):
                if f.name != "family":
                    f = copy.copy(f)
                    f.type = self.hints[f.name]
                    self._parse_dataclass_field(group, f)
        self._fix_actions()

    def _fix_actions(self) -> None:
        """``--bf16`` alone means true for optional booleans too; help may contain "%"."""
        for action in self._actions:
            tp = self.hints.get(action.dest)
            if tp is None or action.option_strings[0].startswith("--no_"):
                continue
            if action.help:
                action.help = action.help.replace("%", "%%")  # argparse formats help with %
            if bool in typing.get_args(tp) and action.nargs is None:
                action.nargs, action.const = "?", True
            # Values stay strings here and are typed by the same code as YAML values, so a bad
            # value gets the same message wherever it was written.
            action.type = None

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        """Choices are shown in --help but checked with the YAML rules (see ``_coerce``)."""

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(f"{message}. Run with --help for every key and its choices.")

    def attach_values(self, argv: list[str]) -> list[str]:
        """``--key -inf`` -> ``--key=-inf``: argparse takes a value starting with "-" for an
        option unless it looks like a plain negative number."""
        out: list[str] = []
        for tok in argv:
            prev = out[-1] if out else ""
            key = prev[2:].replace("-", "_") if prev.startswith("--") and "=" not in prev else ""
            takes_value = key in self.hints and self.hints[key] is not bool
            if takes_value and tok.startswith("-") and not tok.startswith("--"):
                out[-1] = f"{prev}={tok}"
            else:
                out.append(tok)
        return out

    def given_keys(self, argv: list[str]) -> list[str]:
        """The config keys an argv sets explicitly (``--key``, ``--key=v``, ``--no_key``)."""
        keys = []
        for tok in argv:
            if tok.startswith("--"):
                name = tok[2:].split("=", 1)[0].replace("-", "_")
                if name.startswith("no_") and name[3:] in self.hints:
                    name = name[3:]
                if name in self.hints:
                    keys.append(name)
        return keys


def _cli_values(parser: ConfigParser, argv: list[str]) -> tuple[str | None, dict[str, Any]]:
    """``(--config path, {key: value})`` for the keys argv sets, each checked like YAML."""
    namespace, rest = parser.parse_known_args(parser.attach_values(argv))
    if rest:
        bad = next((t for t in rest if t.startswith("-")), rest[0])
        if not bad.startswith("--"):
            raise ConfigError(f"Unexpected argument {bad!r}; use --key value.")
        key = bad[2:].split("=", 1)[0].replace("-", "_")
        known = sorted(parser.hints)
        raise unknown_key_error(key, known, "the command line", parser.config_cls)
    values = {}
    for key in parser.given_keys(argv):
        value = getattr(namespace, key)
        if typing.get_origin(parser.hints[key]) is list and isinstance(value, list):
            # `--k a b`, `--k a,b` and `--k "[a, b]"` (a YAML flow list) all mean [a, b]
            if len(value) == 1 and str(value[0]).strip().startswith("["):
                value = value[0]
            else:
                value = [p for v in value for p in (v.split(",") if isinstance(v, str) else [v])]
        values[key] = _coerce(key, value, parser.hints[key])
    return namespace.config, values


def build_config(config_cls: type, sources: list[tuple[str, dict[str, Any]]]) -> Any:
    """Merge typed values from several sources (later wins) and construct (= validate)."""
    values: dict[str, Any] = {}
    for _, data in sources:
        values.update(data)
    _synthetic_only_where_declared(sources, values)
    _steps_follow_a_later_strategy(sources, values)
    return config_cls(**values)


def _steps_follow_a_later_strategy(sources: list[tuple[str, dict]], values: dict) -> None:
    """``--save_strategy no`` on the command line over a YAML with ``save_steps: 500``: the
    later strategy wins and the earlier interval is dropped (it would only be ignored). An
    interval set together with or after a non-step strategy stays, and validation refuses it."""
    for kind in ("eval", "save"):
        later = _last_set(sources, f"{kind}_steps") < _last_set(sources, f"{kind}_strategy")
        if later and values.get(f"{kind}_strategy") != "steps":
            values.pop(f"{kind}_steps", None)


def _last_set(sources: list[tuple[str, dict]], key: str) -> int:
    """Index of the last source that sets ``key`` (-1: none does)."""
    return max((i for i, (_, data) in enumerate(sources) if key in data), default=-1)


def _synthetic_only_where_declared(sources: list[tuple[str, dict]], values: dict) -> None:
    """Generate synthetic data only at the path declared together with ``synthetic_num_images``.

    A demo YAML names both; a ``--dataset_path`` typed on the command line (``data/mineaple``)
    must not silently become a freshly generated orchard. So when the last source that sets
    ``dataset_path`` (and no later one) sets no ``synthetic_num_images``, generation is off
    and a missing path fails with the prepare command to run.
    """
    path_at = _last_set(sources, "dataset_path")
    if path_at >= 0 and _last_set(sources, "synthetic_num_images") < path_at:
        values["synthetic_num_images"] = 0


def parse_args(config_cls: type, argv: list[str] | None = None, prog: str | None = None) -> Any:
    """Parse ``[--config FILE.yaml] [--key value ...]`` into a validated config."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = ConfigParser(config_cls, prog=prog)
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        raise SystemExit(0)
    yaml_path, cli = _cli_values(parser, argv)
    sources = []
    if yaml_path is not None:
        sources.append((yaml_path, yaml_values(config_cls, read_yaml(yaml_path), yaml_path)))
    sources.append(("the command line", cli))
    return build_config(config_cls, sources)


def load_config(
    config_cls: type, yaml_path: str | os.PathLike | None = None, overrides: dict | None = None
) -> Any:
    """Build and validate a config from an optional YAML file and a dict of overrides (the
    Python form of ``--config FILE --key value``)."""
    sources = []
    if yaml_path is not None:
        data = read_yaml(yaml_path)
        sources.append((str(yaml_path), yaml_values(config_cls, data, str(yaml_path))))
    sources.append(("the overrides", yaml_values(config_cls, dict(overrides or {}), "overrides")))
    return build_config(config_cls, sources)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as a plain dict (what is saved beside checkpoints and logged)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (reloadable with ``--config``)."""
    d = to_dict(cfg)
    d.pop("family", None)
    Path(path).write_text(yaml.safe_dump(d, sort_keys=False))
