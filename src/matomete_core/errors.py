"""The errors of matomete.

    MatometeError
     ├── InvalidFile(MatometeError, ValueError)        a catalog or lines file that cannot be loaded
     ├── MonthNotEnded(MatometeError, ValueError)       closing a month that has not ended (JST)
     ├── NotFound(MatometeError, LookupError)           a view asked about something unknown
     └── NotReplayable(MatometeError, ValueError)       a quarantined message kept redacted, replayed as stored

A decision that refuses a message is not an error: it is a reason code (see ``reasons``).
"""


class MatometeError(Exception):
    """Base of every error raised by matomete."""


class InvalidFile(MatometeError, ValueError):
    """A file to load is malformed; the message names the record and the field."""


class MonthNotEnded(MatometeError, ValueError):
    """A month cannot be closed before it has ended in JST."""


class NotFound(MatometeError, LookupError):
    """A view was asked about a customer, Passport ID or invoice that does not exist."""


class NotReplayable(MatometeError, ValueError):
    """A quarantined message cannot be replayed as stored (its secrets were redacted, or it was
    cut short): it needs a corrected message."""
