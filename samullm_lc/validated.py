"""Pydantic models whose invalid input raises ``ConfigError``, like every other bad input in samullm_lc.

A validator that raises ``ConfigError`` (with a message naming the input and the fix) gets that error back
unchanged; any other validation failure becomes a ``ConfigError`` naming the model.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from samullm_lc.errors import ConfigError


class ValidatedModel(BaseModel):
    """Base model: construction and ``model_validate``/``model_validate_json`` raise ``ConfigError``."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _config_error(type(self), exc) from None

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Any:
        """Validate a dict or model; raise ``ConfigError`` on bad input."""
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as exc:
            raise _config_error(cls, exc) from None

    @classmethod
    def model_validate_json(cls, json_data: str | bytes, *args: Any, **kwargs: Any) -> Any:
        """Validate a JSON document; raise ``ConfigError`` on bad input."""
        try:
            return super().model_validate_json(json_data, *args, **kwargs)
        except ValidationError as exc:
            raise _config_error(cls, exc) from None


def _config_error(model: type, exc: ValidationError) -> ConfigError:
    for error in exc.errors():
        original = (error.get("ctx") or {}).get("error")
        if isinstance(original, ConfigError):
            return original
    return ConfigError(f"invalid {model.__name__}: {exc}")
