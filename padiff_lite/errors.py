"""Every exception padiff_lite raises, in one place.

Each message names the place (dotted paths, class pair, file) and says what to do.
docs/errors.md lists them with their causes and fixes.
"""
from __future__ import annotations


class PadiffError(Exception):
    """Base class of all padiff_lite errors."""


class TransferError(PadiffError):
    """A weight transfer could not be planned or carried out; the target was left untouched.

    ``problems`` holds one record per problem found (all of them, not just the first): a
    :class:`padiff_lite.problems.Problem` (where, what, fix; its text is its Python-API rendering) or plain text.
    """

    def __init__(self, message: str, problems: list | None = None):
        self.head = message
        self.problems = list(problems or [])
        super().__init__(self.render())

    def render(self, cli: bool = False) -> str:
        """The message: the head and every problem, in the Python API's words or (``cli``) the command line's."""
        if not self.problems:
            return self.head
        return self.head + "\n" + "\n".join("  - " + (p.render(cli) if hasattr(p, "render") else str(p))
                                             for p in self.problems)


class TransferInterrupted(KeyboardInterrupt):
    """A KeyboardInterrupt (Ctrl-C, a handler or a time limit raising it) that arrived while a model was
    being written, raised again once the model is whole: ``completed`` is True when the raw model holds the
    complete transfer (the copies were run to the end first), False when it was restored exactly as it was.

    It is a KeyboardInterrupt, not an ``Exception``: ``except KeyboardInterrupt`` catches it and
    ``except Exception`` does not, as for the interrupt it stands for (the original is its ``__cause__``).
    """

    def __init__(self, message: str, completed: bool):
        super().__init__(message)
        self.completed = completed


class RegistryError(PadiffError):
    """A special init could not be registered (duplicate key, wrong signature)."""


class PluginImportError(RegistryError):
    """A plugin file ``padiff_lite/special_init/init_*.py`` failed to import."""


class LayerMapError(PadiffError, ValueError):
    """A layer map or black/white list names modules that are not usable."""


class CheckpointError(PadiffError):
    """A checkpoint file is missing, corrupt, of an unknown kind or does not fit the model."""


class InitError(PadiffError, ValueError):
    """An initialisation scheme was misused (unknown scheme, bad std, strict=True with init_unmatched),
    or a callable scheme raised or replaced a tensor; the model was left as it was."""


class DiffError(PadiffError):
    """Two models could not be compared by outputs (a forward or backward pass failed)."""


class DiffInputError(DiffError, TypeError):
    """``auto_diff`` inputs (or a ``check`` command argument) are not in an accepted form."""


class OutputStructureError(DiffError):
    """The two models returned outputs of different structure (nesting, keys, number or shape of tensors)."""


class PairingError(TransferError):
    """Pairing by execution could not be done: a model failed on the example input, or the call orders of the
    two models do not decide which layer is which. Nothing was written."""


class AmbiguousPairingError(PairingError):
    """Two candidates fit one layer equally by class, shapes and call order: padiff_lite refuses to guess.

    ``candidates`` holds ``(side, path, [candidate paths on the other side])`` for every ambiguous layer.
    """

    def __init__(self, message: str, problems: list[str] | None = None, candidates: list | None = None):
        super().__init__(message, problems)
        self.candidates = list(candidates or [])


class MappingError(PadiffError, ValueError):
    """A mapping (file or dict) is malformed, names paths a model lacks, or contradicts pairing by name.

    ``problems``: one record per entry that does not fit, when the mapping was checked against the models."""

    def __init__(self, message: str, problems: list | None = None):
        self.problems = list(problems or [])
        if self.problems:
            message = message + "\n" + "\n".join("  - " + str(p) for p in self.problems)
        super().__init__(message)


class FactoryError(PadiffError, ValueError):
    """A ``MODULE:CALLABLE`` / ``file.py:CALLABLE`` spec names nothing callable (padiff_lite.factories); the command
    line and convert_checkpoint re-raise it as DiffInputError / CheckpointError with the same message."""


class DumpError(PadiffError):
    """A dump folder cannot be written or read (padiff_lite.verify.dump): not a dump, a file of another format or
    version, tensors missing from its safetensors file, a model of neither framework, a dtype numpy cannot hold."""
