"""The exception for problems a user can fix: bad paths, bad annotations, mismatched classes."""


class DentalError(Exception):
    """A problem with the user's input or settings, not a bug.

    The message is one line that names the file (and record) at fault and says what to do. Tools
    catch it at the top, print the message alone and exit with status 1.
    """


class TrainingInterrupted(DentalError):
    """Training stopped on SIGTERM or SIGINT after saving a checkpoint to resume from.

    Tools exit with `exit_code` (128 + the signal number, as a shell reports a signal).

    Args:
        message (str): the one line to print.
        signal_number (int): the signal received.
    """

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_code = 128 + signal_number
