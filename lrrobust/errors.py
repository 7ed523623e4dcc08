"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class UserError(ValueError):
    """A mistake in what the user asked for (bad option, missing file, foreign checkpoint).

    A ValueError, so library callers (``create_model(..., kernel_size=4)``) can catch it the usual way.

    The message is one line that says what is wrong and what to do.
    """
