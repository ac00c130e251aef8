"""Exceptions that the command line turns into one clear error line.

Everything the user can get wrong (a config value, a path, a task id, a corrupt file)
raises a subclass of :class:`VptrError` whose message names the offending thing.
"""


class VptrError(Exception):
    """Base class: the message is shown to the user as ``vptr: error: <message>``."""


class ConfigError(VptrError, ValueError):
    """An invalid configuration value, rejected before any work starts."""


class DataError(VptrError):
    """A dataset or file that cannot be used (missing, corrupt, empty)."""


class UnknownNameError(ConfigError, KeyError):
    """A name that is not in a registry (task id, encoder, objective...)."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


def unknown(kind: str, name: str, known) -> UnknownNameError:
    """Build an error for an unknown registry name, listing the valid choices."""
    return UnknownNameError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(known))}")
