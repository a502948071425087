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
    heads, width = getattr(obj, "num_attention_heads", None), getattr(obj, "hidden_size", None)
    if isinstance(heads, int) and isinstance(width, int) and heads > 0 and width % heads:
        out.append((f"{key}.num_attention_heads", f"{heads} heads do not divide hidden_size {width}"))
    kv = getattr(obj, "num_key_value_heads", None)
    if isinstance(kv, int) and isinstance(heads, int) and kv > 0 and heads % kv:
        out.append((f"{key}.num_key_value_heads", f"{kv} key/value heads do not divide {heads} attention heads"))
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
