"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A mistake in what the user asked for (bad option, missing file, foreign checkpoint).

    The message is one line that says what is wrong and what to do.
    """
