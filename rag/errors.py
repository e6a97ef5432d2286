"""Errors specrag raises on bad input. Each message names the input at fault and what was expected."""


class SpecragError(Exception):
    """Base of every error specrag raises on purpose."""


class InputError(SpecragError, ValueError):
    """Malformed input: a file, a line, a document or a config value."""


class UnknownComponentError(SpecragError, KeyError):
    """A component name that the registry does not know; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class SaveError(SpecragError, OSError):
    """A save that failed (disk full, permissions, I/O); the version that was at the path is unchanged."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno

    def __str__(self) -> str:  # OSError would print "[Errno ...]" around a one-argument message
        return str(self.args[0])


class FormatVersionError(SpecragError):
    """An on-disk artefact written by another format version."""


class PackError(SpecragError):
    """A model pack that cannot be fetched, verified or converted."""


class HashMismatchError(PackError):
    """A downloaded or assembled file whose sha256 differs from the pin."""


class MissingExtraError(SpecragError, ImportError):
    """An optional dependency is not installed; the message gives the pip line."""


class TruncatedInputWarning(UserWarning):
    """Input longer than a model's window, cut to its first tokens (the message says which and by how much)."""
