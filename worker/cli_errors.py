"""The one error type CLI commands raise for what a user can fix: a missing file, an unreachable
broker, a flag that does not fit. `main()` prints it as one line and exits 2; a traceback is
left for bugs."""


class CliError(Exception):
    """A command cannot go on; the message says why and, where it can, what to do."""
