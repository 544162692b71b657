"""A message on an inbound queue that is not a well-formed Celery protocol-2 task message must not
stop the worker. Celery decodes the body in the worker's main process; a body that decodes but is
not ``[args, kwargs, embed]`` (``{}``, ``"hello"``, ``42``) or a message without an ``id`` header
raised ValueError/TypeError/KeyError out of Celery's strategy: "Unrecoverable error", the worker
exited, its unacknowledged message went back to the queue — and stopped the next worker the same
way. The app's task class (workers.requests) turns such a message into an InvalidTaskError, which
the worker's consumer quarantines (tests/unit/test_worker_keeps_what_celery_cannot_run.py). The fault
suite shows it on a real worker (tests/faults)."""

from __future__ import annotations

import json

import pytest
from celery.exceptions import InvalidTaskError
from kombu import Message

from workers import tasks  # noqa: F401 — registers the tasks
from workers.app import app
from workers.requests import CheckedRequest, RedactedRequest, require_protocol_2

HEADERS = {"lang": "py", "task": "matomete.purchase", "id": "t-1", "root_id": "t-1", "parent_id": None,
           "group": None, "retries": 0, "eta": None, "expires": None}
MALFORMED_BODIES = [b"{}", b'{"message_id": "m"}', b'"hello"', b"42", b"null", b"true", b"[]", b"[1, 2]",
                    b"[1, {}, {}]", b"[[], [], {}]", b"[[], {}, 3]", b"[[], {}, {}, {}]"]


def message(body: bytes, **headers) -> Message:  # noqa: ANN003
    return Message(body=body, content_type="application/json", content_encoding="utf-8",
                   headers={**HEADERS, **headers}, delivery_info={"routing_key": "provider-events"})


@pytest.mark.parametrize("body", MALFORMED_BODIES)
def test_a_body_that_is_not_args_kwargs_embed_is_an_invalid_task(body):
    with pytest.raises(InvalidTaskError):
        require_protocol_2(message(body))


def test_a_well_formed_body_passes():
    require_protocol_2(message(json.dumps([[{"message_id": "m"}], {}, {"callbacks": None}]).encode()))


@pytest.mark.parametrize("request_cls", [CheckedRequest, RedactedRequest])
@pytest.mark.parametrize("body, headers", [(b"{}", {}), (b"[[], {}, {}]", {"id": None}), (b"42", {})])
def test_building_the_request_of_a_malformed_message_is_an_invalid_task(request_cls, body, headers):
    headers = dict(headers)
    msg = message(body, **headers)
    if headers.get("id", "") is None:
        del msg.headers["id"]
    with pytest.raises(InvalidTaskError):
        request_cls(msg, app=app, task=app.tasks["matomete.purchase"])


def test_every_task_of_the_app_checks_its_messages():
    for name, task in app.tasks.items():
        if name.startswith("matomete."):
            assert task.Strategy == "workers.requests:checked_strategy", name
            assert issubclass(_resolve(task.Request), CheckedRequest), name


def _resolve(path):  # noqa: ANN001, ANN202
    from celery.utils.imports import symbol_by_name
    return symbol_by_name(path)
