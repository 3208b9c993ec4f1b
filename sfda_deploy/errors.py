"""The one exception type users see: a message that names the problem and the fix."""
from __future__ import annotations


class SfdaError(Exception):
    """A user-facing error. The CLI prints ``error: <message>`` on one line and exits 2.

    Write the message as "<what is wrong>: <what to do>", e.g.
    ``"--data-root /x has no leftImg8bit/train: point it at the Cityscapes root"``.
    """

    def __init__(self, message: str = "", *args):
        super().__init__(_original_message(message), *args)


def _original_message(message):
    """The one-line message of an error raised in a DataLoader worker.

    A worker's exception reaches the main process as ``type(e)("Caught ... Original Traceback ...
    module.Type: message")``; the traceback text would break the one-line contract, and the original
    message is on its last line.
    """
    if isinstance(message, str) and message.startswith("Caught ") and "Original Traceback" in message:
        last = message.rstrip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return message
