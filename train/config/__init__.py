"""The trainer's configuration: nested dataclasses loaded from YAML, overridable per field.

* :mod:`.model`, :mod:`.task`, :mod:`.sections`: the sections (plain dataclasses, one docstring per
  field; no torch, no model code),
* :mod:`.parse`: the one strict loader (:func:`load_config`, :func:`load_section`),
* :mod:`.help`: ``python -m train --help-config``,
* :mod:`.hf_check`: checks of the free-form Hugging Face config dicts.
"""

from train.config.help import describe, field_docs
from train.config.model import (
    DEFAULT_LORA_TARGETS,
    FrameLayout,
    HFVLMSettings,
    LanguageModelConfig,
    LoraSettings,
    ModelConfig,
    ProjectorConfig,
    VisionTowerConfig,
)
from train.config.parse import (
    ConfigError,
    config_to_dict,
    load_config,
    load_section,
    parse_override,
    save_config,
    split_overrides,
)
from train.config.sections import (
    CheckpointConfig,
    DataConfig,
    DeepSpeedSection,
    LoggingConfig,
    OptimConfig,
    ParallelConfig,
    RunConfig,
    TokenizerConfig,
    TrainConfig,
)
from train.config.task import TaskConfig

__all__ = [
    "DEFAULT_LORA_TARGETS", "CheckpointConfig", "ConfigError", "DataConfig", "DeepSpeedSection", "FrameLayout",
    "HFVLMSettings", "LanguageModelConfig", "LoggingConfig", "LoraSettings", "ModelConfig", "OptimConfig",
    "ParallelConfig", "ProjectorConfig", "RunConfig", "TaskConfig", "TokenizerConfig", "TrainConfig",
    "VisionTowerConfig", "config_to_dict", "describe", "field_docs", "load_config", "load_section",
    "parse_override", "save_config", "split_overrides",
]
