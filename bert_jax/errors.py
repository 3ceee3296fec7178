"""The one exception type for a user's mistake (bad input, missing file, wrong flag), and
the one for a run stopped on request.

The CLI prints a `UserError` as one line and exits with status 2; so it does an
`OSError` that names a file (missing, a directory where a file belongs, no permission,
the disk full) and a device out of memory: the user's machine, not a bug. A `Stopped` run
prints one line saying how to resume and exits with `EXIT_RESUMABLE`. Anything else
keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and how to fix it."""


# sysexits.h's EX_TEMPFAIL: "try again later". A run that stopped on Ctrl-C or SIGTERM after
# saving its checkpoint exits with it, so a scheduler or script can tell "stopped,
# resumable" (75) from "finished" (0), a user's mistake (2) and a crash (1).
EXIT_RESUMABLE = 75


class Stopped(Exception):  # noqa: N818 (a resumable stop, not an error)
    """The run stopped on request (Ctrl-C, SIGTERM) after saving `step`: re-run to resume."""

    def __init__(self, step: int, reason: str, checkpoint_dir: str) -> None:
        super().__init__(f"{reason}: saved step {step} in {checkpoint_dir}")
        self.step, self.reason, self.checkpoint_dir = step, reason, checkpoint_dir
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
