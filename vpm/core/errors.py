"""One base class for every error a person can act on, and the short id that names any other failure.

A `VpmError`'s message is written for people: what is wrong, where, and what to do. Every face (pages, CLI,
API) shows such a message as it is. Anything else that escapes is a bug: it is logged with its traceback
under a short id, and the person sees "something went wrong" with that id, never the exception's text.
"""

from __future__ import annotations

import logging
import uuid


class VpmError(Exception):
    """A problem the person can act on; the message says what and what to do."""


class InvalidRequest(VpmError, ValueError):
    """A request that cannot be served as asked (a threshold out of range, an empty query...)."""


def incident_id() -> str:
    """A short id that ties what a person sees to the log line with the traceback."""
    return uuid.uuid4().hex[:8]


def log_unexpected(log: logging.Logger, err: BaseException, where: str) -> str:
    """Log an unexpected error with its traceback under a fresh id; return the id to show."""
    incident = incident_id()
    log.error("unexpected error %s in %s", incident, where, exc_info=err)
    return incident


def something_went_wrong(incident: str) -> str:
    return f"something went wrong (error {incident}); the details are in the log under that id"
