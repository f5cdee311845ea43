"""What vpm hooks into botocore's event system for every S3 client it makes.

Two hooks: one rejects an answer that cannot have come from S3 (a website, a proxy's error page) before
botocore's parser turns it into an empty listing or a "missing object"; one sends a small PUT's body with its
headers instead of waiting a round trip for S3's "100 Continue".
"""

from __future__ import annotations


class NotS3Answer(Exception):
    """Raised inside botocore when an answer cannot have come from S3; S3Storage turns it into EndpointNotS3."""

    def __init__(self, answer: str):
        super().__init__(answer)
        self.answer = answer  # what came back, for people: "an HTML page (HTTP 200)"


# Their body is the stored object itself, whatever it holds, so only their headers can be judged.
_OBJECT_ANSWERS = frozenset({"GetObject", "HeadObject"})


def check_every_answer(client) -> None:
    """Run _reject_answers_not_from_s3 on every answer this client gets (migrate's own calls included).

    It must see the answer before botocore's 200-error handler, which rewrites any 200 whose body is not
    XML into a 500 and retries it as a cut-off S3 answer: a website's page would then be fetched five
    times and reported as a server error.
    """
    from botocore import handlers

    events = client.meta.events
    theirs = getattr(handlers, "_handle_200_error", None)  # private: without it, ours simply runs second
    if theirs is not None:
        events.unregister("before-parse.s3.*", theirs)
    # The unique id keeps a client shared by several S3Storage objects from running the check twice.
    events.register_first("before-parse.s3.*", _reject_answers_not_from_s3, unique_id="vpm-not-s3-check")
    if theirs is not None:
        events.register_first("before-parse.s3.*", theirs)


def _reject_answers_not_from_s3(operation_model, response_dict, **_):
    """botocore 'before-parse' hook: stop an answer that cannot have come from S3 before botocore's parser
    turns it into an empty listing, a 'missing object' or a KeyError. Raises NotS3Answer."""
    body = response_dict.get("body")
    answer = _why_not_s3(operation_model.name, response_dict.get("status_code", 0),
                         response_dict.get("headers") or {}, body)
    if answer:
        if hasattr(body, "close"):  # a GetObject stream nobody will read: give its connection back
            body.close()
        raise NotS3Answer(answer)


def _why_not_s3(operation: str, status: int, headers, body) -> str | None:
    """What in this answer S3 would never send, for people; None when it may well be S3.

    Judged by the body, not the Content-Type: real S3 servers (moto's among them) label bodiless answers
    text/html. An answer to HEAD has no body over HTTP (whatever a mock hands back), so a website's 404 to
    a HEAD cannot be told from S3's.
    """
    if status < 300 and operation in _OBJECT_ANSWERS:
        has_etag = any(str(name).lower() == "etag" for name in headers)
        return None if has_etag else f"HTTP {status} without an ETag"
    if operation.startswith("Head") or not isinstance(body, bytes) or not body.strip():
        return None
    start = body.lstrip(b"\xef\xbb\xbf \t\r\n")[:64].lower()
    if start.startswith((b"<!doctype html", b"<html")):
        return f"an HTML page with HTTP {status}"
    if not start.startswith(b"<") and status < 500:  # a proxy's plain-text 503 may pass: botocore retries it
        return f"HTTP {status} with a body that is not XML"
    return None


# A PUT of a body up to this size goes in one round trip, without waiting for S3's "100 Continue" first.
SEND_AT_ONCE = 1 << 20


def send_small_puts_at_once(client) -> None:
    """botocore asks for "Expect: 100-continue" on every PUT of a file and waits for S3's go-ahead before sending
    the body: a whole extra round trip per photo, which a bucket tens of milliseconds away makes the largest
    cost of a migration. A small body is sent with its headers instead; S3 still checks the SHA-256 it carries
    and answers 412 to a failed If-None-Match as before (only a large body is worth not sending in vain). The
    header is not signed, so it can go after signing. Registering twice on one client changes nothing."""
    client.meta.events.register("before-send.s3.PutObject", _drop_expect, unique_id="vpm-send-at-once")


def _drop_expect(request, **_kwargs) -> None:
    try:
        length = int(request.headers.get("Content-Length") or -1)
    except ValueError:
        return
    if 0 <= length <= SEND_AT_ONCE and "Expect" in request.headers:
        del request.headers["Expect"]
