"""The exception for problems a user can fix: bad paths, bad annotations, mismatched classes."""


class DentalError(Exception):
    """A problem with the user's input or settings, not a bug.

    The message is one line that names the file (and record) at fault and says what to do. Tools
    catch it at the top, print the message alone and exit with status 1.
    """
