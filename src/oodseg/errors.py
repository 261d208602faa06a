"""The one exception type users see: a one-line message naming the problem."""


class OodsegError(ValueError):
    """Bad input or an impossible request; the CLI prints ``error: <message>`` and exits 2.

    Raise it with a single line that names the offending file/argument and what is wrong,
    e.g. ``OodsegError("scores/abc.hdf5: contains NaN")``.
    """


class OodsegWarning(UserWarning):
    """A result may mislead (e.g. float16 storage merged distinct scores); the CLI prints ``warning: <message>``.

    Issued with :func:`warnings.warn` as one line naming the file or method and the measured problem.
    """
