"""The command line's one error type."""


class CliError(Exception):
    """Bad input: printed as one line ``jaxprune: error: <message>``, exit status 2."""
