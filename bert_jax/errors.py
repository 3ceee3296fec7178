"""The one exception type for a user's mistake (bad input, missing file, wrong flag), and
the one for a run stopped on request.

The CLI prints a `UserError` as one line and exits with status 2; a `Stopped` run as one
line saying how to resume, with status `EXIT_RESUMABLE`; anything else is a bug and
keeps its traceback.
"""


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
