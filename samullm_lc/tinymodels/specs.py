"""The shapes of the tiny random-weight models, and their Hugging Face ``config.json``.

Each spec is small enough that the vLLM CPU engine starts it in seconds, yet the specs differ in
width, depth, architecture family and vocabulary, so an app that routes between several of them sees
real differences in speed. With dummy (near-zero) weights the next-token distribution is close to
uniform, so a sampled token is EOS with probability about ``1 / vocab_size``: the vocabulary size sets
the mean output length (geometric), which is why each model gets a different one.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from samullm_lc.tinymodels.tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    MIN_VOCAB_SIZE,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    PreTokenizerStyle,
)
from samullm_lc.validated import ValidatedModel

Architecture = Literal["LlamaForCausalLM", "Qwen2ForCausalLM"]
_MODEL_TYPES: dict[str, str] = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
# Head sizes the vLLM CPU attention backend implements.
_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
_DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2}


class TinyModelSpec(ValidatedModel):
    """Shape, vocabulary and dtype of one tiny random-weight decoder model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    architecture: Architecture
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    vocab_size: int = Field(gt=MIN_VOCAB_SIZE, description="Tokenizer size, equal to the model's vocab_size.")
    max_position_embeddings: int = Field(4096, gt=0)
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="Engine dtype. float32 runs 10-30x faster than bfloat16 on x86 CPUs without AVX-512 BF16, "
        "but vLLM's dtype='auto' downcasts float32 configs to bfloat16: pass it explicitly (see vllm_kwargs).",
    )
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    description: str = ""

    @model_validator(mode="after")
    def _check_shape(self) -> TinyModelSpec:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(f"{self.name}: heads must divide hidden_size and KV heads must divide heads")
        if self.head_dim not in _CPU_HEAD_SIZES:
            raise ValueError(f"{self.name}: head_dim {self.head_dim} is not one of {_CPU_HEAD_SIZES}")
        return self

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads

    @property
    def tokenizer_style(self) -> PreTokenizerStyle:
        """Pre-tokenizer of the family: transformers rebuilds Qwen2's whatever tokenizer.json says."""
        return "qwen2" if self.architecture == "Qwen2ForCausalLM" else "gpt2"

    @property
    def kv_cache_bytes_per_token(self) -> int:
        """Bytes of KV cache one token takes in the engine, all layers, keys and values."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * _DTYPE_BYTES[self.dtype]

    @property
    def bos_token_id(self) -> int:
        """Id of ``<|bos|>``: special tokens take the first ids, in ``SPECIAL_TOKENS`` order."""
        return SPECIAL_TOKENS.index(BOS_TOKEN)

    @property
    def eos_token_id(self) -> int:
        """Id of ``<|eos|>``."""
        return SPECIAL_TOKENS.index(EOS_TOKEN)

    @property
    def pad_token_id(self) -> int:
        """Id of ``<|pad|>``."""
        return SPECIAL_TOKENS.index(PAD_TOKEN)

    def vllm_kwargs(self) -> dict[str, Any]:
        """Return the ``vllm.LLM`` arguments this model needs: dummy weights and the explicit dtype."""
        return {"load_format": "dummy", "dtype": self.dtype}

    def hf_config(self) -> dict[str, Any]:
        """Return the ``config.json`` contents for this model (transformers 5 layout)."""
        config: dict[str, Any] = {
            "architectures": [self.architecture],
            "model_type": _MODEL_TYPES[self.architecture],
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "hidden_act": "silu",
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "default"},
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": 0.02,
            "attention_dropout": 0.0,
            "use_cache": True,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "dtype": self.dtype,
            "torch_dtype": self.dtype,
        }
        if self.architecture == "LlamaForCausalLM":
            config.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
        else:
            config.update(
                use_sliding_window=False,
                sliding_window=None,
                max_window_layers=self.num_layers,
                layer_types=["full_attention"] * self.num_layers,
            )
        return config


TINY_MODELS: dict[str, TinyModelSpec] = {
    spec.name: spec
    for spec in (
        TinyModelSpec(
            name="tiny-llama-s",
            architecture="LlamaForCausalLM",
            hidden_size=128,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            intermediate_size=384,
            vocab_size=320,
            description="Smallest and fastest; shortest outputs.",
        ),
        TinyModelSpec(
            name="tiny-llama-m",
            architecture="LlamaForCausalLM",
            hidden_size=256,
            num_layers=4,
            num_heads=8,
            num_kv_heads=4,
            intermediate_size=768,
            vocab_size=448,
            description="Medium Llama.",
        ),
        TinyModelSpec(
            name="tiny-qwen2-m",
            architecture="Qwen2ForCausalLM",
            hidden_size=384,
            num_layers=6,
            num_heads=6,
            num_kv_heads=2,
            intermediate_size=1152,
            vocab_size=640,
            tie_word_embeddings=True,
            description="Qwen2 (QKV bias, tied embeddings), wider and deeper than tiny-llama-m.",
        ),
        TinyModelSpec(
            name="tiny-llama-l",
            architecture="LlamaForCausalLM",
            hidden_size=512,
            num_layers=8,
            num_heads=8,
            num_kv_heads=2,
            intermediate_size=1536,
            vocab_size=896,
            description="Largest and clearly slowest; longest outputs.",
        ),
    )
}
