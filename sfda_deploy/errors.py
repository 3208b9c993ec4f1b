"""The one exception type users see: a message that names the problem and the fix."""


class SfdaError(Exception):
    """A user-facing error. The CLI prints ``error: <message>`` on one line and exits 2.

    Write the message as "<what is wrong>: <what to do>", e.g.
    ``"--data-root /x has no leftImg8bit/train: point it at the Cityscapes root"``.
    """
