"""Pydantic models whose invalid input raises ``ConfigError``, like every other bad input in samullm_lc.

A validator that raises ``ConfigError`` (with a message naming the input and the fix) gets that error back
unchanged; any other validation failure becomes a ``ConfigError`` naming the model and the first fields at
fault (location and pydantic's message, without its documentation links). This is the one place pydantic's
errors become ours: a model names what it is for people (``error_subject``) and may add a hint
(``error_hint``); code that validates by hand calls ``validation_problems``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from samullm_lc.errors import ConfigError

MAX_PROBLEMS_SHOWN = 3  # fields named in one error message; the count of the rest follows


class ValidatedModel(BaseModel):
    """Base model: construction and ``model_validate``/``model_validate_json`` raise ``ConfigError``."""

    error_subject: ClassVar[str | None] = None
    """What the model is, in an error message (``invalid <subject>: ...``); None: the class name."""

    @classmethod
    def error_hint(cls) -> str:
        """A sentence appended to a validation error (what is allowed, how to fix it); empty by default."""
        return ""

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
    """The validator's own ``ConfigError`` if one raised it, else one naming the first few fields at fault."""
    errors = exc.errors()
    for error in errors:
        original = (error.get("ctx") or {}).get("error")
        if isinstance(original, ConfigError):
            return original
    subject = getattr(model, "error_subject", None) or model.__name__
    hint = model.error_hint() if hasattr(model, "error_hint") else ""
    return ConfigError(f"invalid {subject}: {validation_problems(exc)}" + (f"; {hint}" if hint else ""))


def validation_problems(exc: ValidationError, *, whole: str = "document") -> str:
    """Pydantic's problems on one line: each field's location and message (``whole`` names a problem of the
    whole input), the first ``MAX_PROBLEMS_SHOWN`` of them, without pydantic's documentation links."""
    errors = exc.errors()
    shown = "; ".join(f"{'.'.join(map(str, e['loc'])) or whole}: {e['msg']}" for e in errors[:MAX_PROBLEMS_SHOWN])
    more = f" (and {len(errors) - MAX_PROBLEMS_SHOWN} more)" if len(errors) > MAX_PROBLEMS_SHOWN else ""
    return shown + more
