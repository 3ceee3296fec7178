"""The one exception type for a user's mistake (bad input, missing file, wrong flag).

The CLI prints a `UserError` as one line and exits with status 2; so it does an
`OSError` that names a file (missing, a directory where a file belongs, no permission,
the disk full) and a device out of memory: the user's machine, not a bug. Anything else
keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and how to fix it."""


def user_message(error: BaseException) -> str | None:
    """The one line to show for `error` if it is the user's to fix, else None (a bug)."""
    if isinstance(error, UserError):
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        return "; ".join(lines) or type(error).__name__
    text = str(error)
    if type(error).__name__ in ("JaxRuntimeError", "XlaRuntimeError") and \
            text.startswith("RESOURCE_EXHAUSTED"):
        # The device's memory, not a bug: the first line says how much was asked for.
        return (f"the device ran out of memory ({text.splitlines()[0]}); lower the batch "
                "size, or split it with --config.train.accum_steps, or set "
                "--config.model.remat=True")
    if isinstance(error, OSError) and (error.filename is not None or error.strerror):
        where = "" if error.filename is None else f": {error.filename}"
        if error.filename2 is not None:
            where += f" -> {error.filename2}"
        return f"{error.strerror or error}{where}"
    return None
