"""The one exception type users see as a single clear line (CLIs exit non-zero with it)."""


class LEPError(Exception):
    """Bad input or an impossible request. The message is shown to the user as one line."""
