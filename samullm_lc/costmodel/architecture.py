"""The facts of a transformer that decide its speed and memory: layers, widths, heads, experts.

A ``ModelArchitecture`` is read from a Hugging Face ``config.json`` (any path) or taken from the built-in
catalogue by model name, so planning works offline without weights.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, model_validator

from samullm_lc.errors import ConfigError, UnknownModelError
from samullm_lc.user_files import read_user_text
from samullm_lc.validated import ValidatedModel

# Aliases used by the config.json of different model families, per field, first match wins.
_CONFIG_ALIASES: dict[str, tuple[str, ...]] = {
    "num_layers": ("num_hidden_layers", "n_layers", "num_layers", "n_layer"),
    "hidden_size": ("hidden_size", "d_model", "n_embd"),
    "num_attention_heads": ("num_attention_heads", "n_heads", "n_head"),
    "num_kv_heads": ("num_key_value_heads", "multi_query_group_num", "n_kv_heads", "num_kv_heads"),
    "intermediate_size": ("intermediate_size", "ffn_hidden_size", "n_inner"),
    "vocab_size": ("vocab_size", "padded_vocab_size"),
    "max_model_len": ("max_position_embeddings", "seq_length", "max_seq_len", "n_positions"),
    "num_experts": ("num_local_experts", "num_experts", "n_routed_experts"),
    "experts_per_token": ("num_experts_per_tok", "moe_top_k", "top_k"),
}
# Families whose MLP is not gated (two projections, not three).
_UNGATED_FAMILIES = ("GPTNeoX", "MPT", "Phi", "GPT2", "GPTJ", "Falcon", "Bloom", "OPT", "StableLMAlpha")
_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float8": 1, "int8": 1}


class ModelArchitecture(ValidatedModel):
    """Shape of a decoder-only transformer, enough to predict its FLOPs, bytes moved and memory."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    family: str = Field(description="The config's architecture class, e.g. LlamaForCausalLM.")
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    intermediate_size: int = Field(gt=0, description="MLP width of one expert.")
    vocab_size: int = Field(gt=0)
    max_model_len: int = Field(gt=0, description="Longest sequence, tokens (max_position_embeddings).")
    gated_mlp: bool = True
    num_experts: int = Field(1, ge=1)
    experts_per_token: int = Field(1, ge=1)
    tie_word_embeddings: bool = False
    dtype_bytes: int = Field(2, ge=1, description="Bytes per weight and KV-cache element.")

    @model_validator(mode="after")
    def _check_shape(self) -> ModelArchitecture:
        if self.num_attention_heads % self.num_kv_heads:
            raise ConfigError(
                f"model {self.name!r}: num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_kv_heads={self.num_kv_heads}; fix the config.json"
            )
        if self.experts_per_token > self.num_experts:
            raise ConfigError(f"model {self.name!r}: experts_per_token > num_experts")
        return self

    # ---- sizes -------------------------------------------------------------------------------------
    @property
    def attention_params_per_layer(self) -> int:
        q_and_o = 2 * self.hidden_size * self.num_attention_heads * self.head_dim
        k_and_v = 2 * self.hidden_size * self.num_kv_heads * self.head_dim
        return q_and_o + k_and_v

    @property
    def mlp_params_per_expert(self) -> int:
        return (3 if self.gated_mlp else 2) * self.hidden_size * self.intermediate_size

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def num_params(self) -> int:
        """All weights, every expert included."""
        router = self.hidden_size * self.num_experts if self.num_experts > 1 else 0
        per_layer = self.attention_params_per_layer + self.num_experts * self.mlp_params_per_expert + router
        return self.num_layers * per_layer + self.embedding_params

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token occupies, all layers, K and V."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def linear_flops_per_token(self) -> float:
        """FLOPs of the dense projections (active experts only) and the LM head for one token."""
        active_mlp = self.experts_per_token * self.mlp_params_per_expert
        return 2.0 * (self.num_layers * (self.attention_params_per_layer + active_mlp) + self.vocab_size * self.hidden_size)

    @property
    def attention_flops_per_pair(self) -> float:
        """FLOPs of QK^T and AV for one (query token, context token) pair, all layers."""
        return 4.0 * self.num_layers * self.num_attention_heads * self.head_dim

    # ---- constructors ------------------------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, config: dict[str, Any], name: str) -> ModelArchitecture:
        """Read the fields that matter from a Hugging Face config.json dictionary; ``ConfigError`` naming the
        field if one is missing or not a number of the right kind."""
        if not isinstance(config, dict):
            raise ConfigError(f"model {name!r}: config.json holds a JSON {type(config).__name__}, not an object; "
                              "pass the model's Hugging Face config.json")

        def pick(field: str, default: int | None = None) -> int:
            for key in _CONFIG_ALIASES[field]:
                if config.get(key) is not None:
                    return _whole(config[key], key, name)
            if default is None:
                raise ConfigError(
                    f"model {name!r}: config.json has none of {_CONFIG_ALIASES[field]}; it is not a decoder-only "
                    f"transformer config samullm_lc can read. Pass a complete config.json."
                )
            return default

        family = _family(config)
        hidden = pick("hidden_size")
        heads = pick("num_attention_heads")
        kv_heads = pick("num_kv_heads", heads)
        if config.get("multi_query") is True:  # Falcon-style single KV head.
            kv_heads = 1
        intermediate = pick("intermediate_size", 0) or int(_number(config.get("expansion_ratio", 4),
                                                                    "expansion_ratio", name) * hidden)
        head_dim = _whole(config["head_dim"], "head_dim", name) if config.get("head_dim") else hidden // heads
        if head_dim == 0:
            raise ConfigError(f"model {name!r}: hidden_size {hidden} is smaller than num_attention_heads {heads}, "
                              "so a head would have no width; fix the config.json or give head_dim")
        dtype = str(config.get("torch_dtype") or config.get("dtype") or "float16")
        return cls(
            name=name,
            family=family,
            num_layers=pick("num_layers"),
            hidden_size=hidden,
            num_attention_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=intermediate,
            vocab_size=pick("vocab_size"),
            max_model_len=pick("max_model_len", 2048),
            gated_mlp=not family.startswith(_UNGATED_FAMILIES),
            num_experts=pick("num_experts", 1),
            experts_per_token=pick("experts_per_token", 1),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            dtype_bytes=_DTYPE_BYTES.get(dtype, 2),
        )

    @classmethod
    def from_config_file(cls, path: str | Path, name: str | None = None) -> ModelArchitecture:
        """Read a config.json file, or the config.json inside a model folder; ``ConfigError`` naming the file
        if it is missing, not UTF-8, not JSON or not a model config."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        fix = "pass the model's Hugging Face config.json (or its folder)"
        text = read_user_text(path, what="model config", fix=fix)
        try:
            config = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"model config {path} is not JSON ({exc}); {fix}") from None
        try:
            return cls.from_hf_config(config, name=name or str(path.parent))
        except ConfigError as exc:
            raise ConfigError(f"model config {path}: {exc}") from None


def _family(config: dict[str, Any]) -> str:
    """The config's architecture class (``LlamaForCausalLM``), else its ``model_type``, else ``unknown``."""
    families = config.get("architectures")
    if isinstance(families, list) and families and isinstance(families[0], str):
        return families[0]
    return str(config.get("model_type") or "unknown")


def _number(value: Any, key: str, name: str) -> float:
    """A config.json value that must be a finite number above 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
        raise ConfigError(f"model {name!r}: config.json field {key!r} is {value!r:.40}, not a number above 0; "
                          "fix the config.json")
    return value


def _whole(value: Any, key: str, name: str) -> int:
    """A config.json value that must be a whole number above 0 (``4096`` or ``4096.0``)."""
    number = _number(value, key, name)
    if number != int(number):
        raise ConfigError(f"model {name!r}: config.json field {key!r} is {value!r}, not a whole number; "
                          "fix the config.json")
    return int(number)


@cache
def _catalogue() -> dict[str, ModelArchitecture]:
    raw = json.loads(resources.files("samullm_lc.costmodel.data").joinpath("architectures.json").read_text())
    return {entry["name"]: ModelArchitecture.model_validate(entry) for entry in raw["models"]}


def catalogue_names() -> list[str]:
    """Names of the built-in architectures, sorted."""
    return sorted(_catalogue())


def resolve_architecture(model: str | Path | ModelArchitecture) -> ModelArchitecture:
    """Turn a catalogue name, a HF repo id whose short name is catalogued, or a config path into an architecture."""
    if isinstance(model, ModelArchitecture):
        return model
    text = str(model)
    path = Path(text)
    if path.exists():
        return ModelArchitecture.from_config_file(path, name=path.name if path.is_dir() else path.parent.name)
    catalogue = _catalogue()
    lowered = {name.lower(): arch for name, arch in catalogue.items()}
    for key in (text, text.split("/")[-1]):
        if key.lower() in lowered:
            return lowered[key.lower()]
    raise UnknownModelError(
        f"unknown model {text!r}: it is not a path to a config.json or model folder, and not in the built-in "
        f"catalogue ({', '.join(catalogue_names())}). Pass the path of the model's config.json."
    )
