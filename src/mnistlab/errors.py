"""The project's one user-facing error type."""


class MnistlabError(Exception):
    """A mistake in the user's input or environment, explained in one line.

    The CLI prints ``error: <message>`` and exits with status 2 instead of a traceback,
    so the message must name the file, field or value at fault and what was expected.
    """
