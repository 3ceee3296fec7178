"""The one exception type for a user's mistake (bad input, missing file, wrong flag).

The CLI prints a `UserError` as one line and exits with status 2; anything else is a
bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and how to fix it."""
