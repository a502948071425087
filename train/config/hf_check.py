"""Checks of the free-form Hugging Face config dicts ``model.llm.config`` / ``model.vision.config``.

Transformers accepts any extra keyword as an attribute (a ``hiden_size`` typo trains the default
width silently) and reports bad values as multi-line ``huggingface_hub`` validation tracebacks.
:func:`hf_config_problems` builds each config class from the dict (no weights, milliseconds) when
the config is loaded, and turns both into ``(field, message)`` pairs for ``config.ConfigError``.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from typing import Any


def _declared(cls: type) -> set[str]:
    """Keyword names a config class declares: dataclass fields, __init__ parameters, attribute_map."""
    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            try:
                names |= set(inspect.signature(klass.__init__).parameters)
            except (TypeError, ValueError):
                pass
    return names | set(getattr(cls, "attribute_map", {}) or {})


def _first_line(e: Exception) -> str:
    """The informative line of a (possibly multi-line huggingface_hub) validation error."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):  # "Validation error for field 'x':" + the reason
        return f"{lines[0][:-1]}: {lines[1]}"
    return lines[0] if lines else type(e).__name__


def check_hf_config(cls: type, kwargs: dict[str, Any], key: str) -> list[tuple[str, str]]:
    """Problems of ``cls(**kwargs)``: unknown keys (with the closest known one), invalid values."""
    try:
        obj = cls(**kwargs)
    except Exception as e:  # noqa: BLE001 - transformers / huggingface_hub raise many types here
        return [(key, f"invalid for {cls.__name__}: {_first_line(e)}")]
    known = _declared(cls)
    out = []
    for name in kwargs:
        # a consumed legacy key (e.g. rope_theta -> rope_parameters) is not left as an attribute
        if name not in known and name in vars(obj):
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean '{key}.{close[0]}'?)" if close else ""
            out.append((f"{key}.{name}", f"unknown key for {cls.__name__}{hint}"))
    out += _value_problems(obj, kwargs, key)
    heads, width = getattr(obj, "num_attention_heads", None), getattr(obj, "hidden_size", None)
    if isinstance(heads, int) and isinstance(width, int) and heads > 0 and width % heads:
        out.append((f"{key}.num_attention_heads", f"{heads} heads do not divide hidden_size {width}"))
    kv = getattr(obj, "num_key_value_heads", None)
    if isinstance(kv, int) and isinstance(heads, int) and kv > 0 and heads % kv:
        out.append((f"{key}.num_key_value_heads", f"{kv} key/value heads do not divide {heads} attention heads"))
    return out


POSITIVE = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "vocab_size", "max_position_embeddings", "patch_size", "image_size", "num_channels")
"""Sizes that must be > 0: transformers stores a negative or zero one and fails only when the model is built."""


def _value_problems(obj: Any, kwargs: dict[str, Any], key: str) -> list[tuple[str, str]]:
    """Values transformers accepts in the config but cannot build a model from: sizes <= 0, an unknown
    activation, an unknown RoPE scaling type."""
    from transformers.activations import ACT2FN
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    out = []
    for name in POSITIVE:
        v = kwargs.get(name)
        if isinstance(v, int) and not isinstance(v, bool) and v <= 0:
            out.append((f"{key}.{name}", f"must be > 0, got {v}"))
    for name in ("hidden_act", "hidden_activation"):
        v = kwargs.get(name)
        if isinstance(v, str) and v not in ACT2FN:
            close = difflib.get_close_matches(v, sorted(ACT2FN), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            out.append((f"{key}.{name}", f"unknown activation {v!r}{hint}"))
    for name in ("rope_scaling", "rope_parameters"):
        v = kwargs.get(name)
        kind = (v.get("rope_type") or v.get("type")) if isinstance(v, dict) else None
        known = {"default", *ROPE_INIT_FUNCTIONS}
        if kind is not None and kind not in known:
            out.append((f"{key}.{name}", f"unknown RoPE type {kind!r}; known: {', '.join(sorted(known))}"))
    return out


def hf_config_problems(model: Any) -> list[tuple[str, str]]:
    """``(field, message)`` for the LLM and vision config dicts of a ``train.config.ModelConfig``."""
    # transformers is imported only when a config holds HF config dicts: loading a config stays light
    from transformers import CLIPVisionConfig, SiglipVisionConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    out: list[tuple[str, str]] = []
    llm = model.llm
    if llm.path is None and isinstance(llm.config, dict) and "model_type" in llm.config:
        kw = dict(llm.config)
        model_type = kw.pop("model_type")
        if model_type not in CONFIG_MAPPING:
            close = difflib.get_close_matches(str(model_type), list(CONFIG_MAPPING.keys()), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return [("model.llm.config.model_type", f"unknown model type {model_type!r}{hint}")]
        out += check_hf_config(CONFIG_MAPPING[model_type], kw, "model.llm.config")
    vis = model.vision
    classes = {"siglip": SiglipVisionConfig, "clip": CLIPVisionConfig}
    if vis.path is None and isinstance(vis.config, dict) and vis.kind in classes:
        kw = {**vis.config, **({"image_size": vis.image_size} if vis.image_size is not None else {})}
        out += check_hf_config(classes[vis.kind], kw, "model.vision.config")
    return out
