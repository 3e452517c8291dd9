"""The config stage: dataclasses with TrainingArguments' names, parsed from YAML + CLI.

``args`` declares the keys, ``validate`` refuses impossible settings (run by every config's
``__post_init__``), ``values`` reads and types YAML, ``parser`` is the HfArgumentParser
command line. Nothing here imports from a later stage.
"""

from sam_hf.config.args import Sam2Config, Sam3Config, Sam3TrackerConfig
from sam_hf.config.errors import ConfigError
from sam_hf.config.parser import load_config, parse_args, save_config, to_dict
from sam_hf.config.validate import validate

__all__ = [
    "ConfigError",
    "Sam2Config",
    "Sam3Config",
    "Sam3TrackerConfig",
    "load_config",
    "parse_args",
    "save_config",
    "to_dict",
    "validate",
]
