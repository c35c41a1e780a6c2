"""One exception hierarchy for the whole package.

Every error a user can trigger is a ``SamullmError``; its message names the input at fault and the fix.
"""


class SamullmError(Exception):
    """Base class of every error samullm_lc raises on purpose."""


class ConfigError(SamullmError, ValueError):
    """A configuration value (model, hardware, plan, sampling parameter) is invalid."""


class UnknownModelError(ConfigError, KeyError):
    """A model name is neither in the built-in catalogue nor a path to a config.json."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class UnknownHardwareError(ConfigError, KeyError):
    """A hardware name is not in the hardware catalogue."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DoesNotFitError(SamullmError):
    """A model with a given plan does not fit the memory of the devices it was given."""


class ProfileError(SamullmError):
    """A latency profile is missing, malformed, or does not match the model it is used for."""


class EngineError(SamullmError):
    """The vLLM engine could not be started or failed while running."""


class JournalError(SamullmError):
    """The run journal cannot be used: corrupt, locked by another run, unreadable rows, or a failed write."""


class PoolError(SamullmError):
    """The engine pool is not running or its driver failed; the message says why and what to do."""


class RequestError(SamullmError):
    """One request failed (bad input, an engine that could not run it); the message names the request and why."""
