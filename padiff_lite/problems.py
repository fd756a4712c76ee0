"""What is wrong, as a record: where, what, and how to fix it.

Validation, pairing and planning produce :class:`Problem` records and errors carry them
(:class:`padiff_lite.errors.TransferError`'s ``problems``); a message is a rendering of them. A problem is also the
text of its Python-API rendering (it is a ``str``), so ``problem in message`` and comparisons with text keep working;
the command line renders the same record in its own words (:meth:`Problem.render` with ``cli=True``: its flags, not
the Python API's arguments), never by rewriting the text.
"""
from __future__ import annotations


class Problem(str):
    """One problem: ``where`` (the layer pair, tensor or file it is about; "" when about the whole), ``what`` is wrong,
    and ``fix``: how to fix it through the Python API. ``cli_fix``: the command line's way to fix it when it differs
    (None: the same words). ``sep``: what joins the fix to the rest ("; ", or a new line for a problem of many
    lines); ``joint``: what joins ``where`` to ``what`` (": ", or " " when the place is the sentence's subject:
    "base fc is already paired ...")."""

    def __new__(cls, where: str, what: str, fix: str = "", cli_fix: str | None = None, sep: str = "; ",
                joint: str = ": "):
        self = super().__new__(cls, _render(where, what, fix, sep, joint))
        self.where, self.what, self.fix, self.cli_fix, self.sep, self.joint = where, what, fix, cli_fix, sep, joint
        return self

    def render(self, cli: bool = False) -> str:
        """The problem as a user reads it: through the Python API (``str(problem)``), or on the command line."""
        if not cli or self.cli_fix is None:
            return str(self)
        return _render(self.where, self.what, self.cli_fix, self.sep, self.joint)

    def __reduce__(self):
        return (Problem, (self.where, self.what, self.fix, self.cli_fix, self.sep, self.joint))


def _render(where: str, what: str, fix: str, sep: str, joint: str) -> str:
    text = f"{where}{joint}{what}" if where else what
    return f"{text}{sep}{fix}" if fix else text


def render(problem, cli: bool = False) -> str:
    """``problem`` (a :class:`Problem` or plain text) as a user reads it."""
    return problem.render(cli) if isinstance(problem, Problem) else str(problem)
