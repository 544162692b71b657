"""Text a database cannot store still ends in the quarantine. JSON can carry a lone surrogate
(``"\\ud800"``), which Python decodes into a str no driver encodes as UTF-8, and a NUL
(``"\\u0000"``), which PostgreSQL refuses in text — in a value, or in a key that the validation
detail names. Before the fix, storing such a message raised out of the bus: the worker retried it,
failed to quarantine it the same way, and Celery dropped it as a failed task.
(tests/integration/test_unencodable_text_pg.py runs the same bodies on PostgreSQL.)"""

from __future__ import annotations

import json

from matomete_core.service import bus
from matomete_core.service.quarantine import list_quarantined
from tests.unit.conftest import jst

AT = jst("2026-08-10 12:00")
TASKS = ["matomete.purchase", "matomete.set_limits", "matomete.line_change"]
FROM_THE_WIRE = {  # as Celery's JSON decoding hands them to the task
    "surrogate-value": json.loads('{"message_id": "\\ud800"}'),
    "surrogate-key": json.loads('{"\\udcff": 1, "message_id": "m-1"}'),
    "surrogate-secret": json.loads('{"message_id": "m-2", "access_key": "\\udc80", "customer_id": "CAF0000012573"}'),
    "nul-value": json.loads('{"message_id": "a\\u0000b"}'),
    "nul-key": json.loads('{"a\\u0000b": 1, "message_id": "m-3"}'),
}


def quarantines_each(deps) -> None:
    for task in TASKS:
        for name, body in FROM_THE_WIRE.items():
            decision = bus.handle(deps, task, [body], {}, now=AT)
            assert (decision["status"], decision["reason"]) == ("quarantined", "INVALID_MESSAGE"), (task, name)
    entries = list_quarantined(deps.engine)
    assert len(entries) == len(TASKS) * len(FROM_THE_WIRE)
    for entry in entries:  # what an operator reads is valid Unicode without NUL
        text = json.dumps(entry, ensure_ascii=False)
        text.encode("utf-8")
        assert "\x00" not in text


def quarantines_a_failure(deps) -> None:
    decision = bus.quarantine_failure(deps, "matomete.purchase", [{"order_id": "\ud800\x00"}], {},
                                      RuntimeError("a bug"), 4, now=AT)
    assert (decision["status"], decision["reason"]) == ("quarantined", "PROCESSING_FAILED")
    (entry,) = [e for e in list_quarantined(deps.engine) if e["reason"] == "PROCESSING_FAILED"]
    assert entry["message"] == {"order_id": "\ufffd\x00"}  # stored as the escape \\u0000, never a raw NUL


def test_messages_with_lone_surrogates_or_nul_are_quarantined_not_raised(deps):
    quarantines_each(deps)


def test_a_failed_message_with_lone_surrogates_is_quarantined_processing_failed(deps):
    quarantines_a_failure(deps)
