"""How a worker process collects its garbage: what start-up built is frozen, the young generation
collected in larger steps.

Deciding a batch allocates tens of thousands of container objects, and reference counting frees
nearly all of them. CPython's cyclic collector does not know that: with its default threshold (700)
it ran 785 young, 70 middle and 7 full collections while the batch worker decided 14,000 messages in
batches of 500, the full ones walking every object start-up had built (Celery's, SQLAlchemy's,
pydantic's) — 1.39 s of the loop's 12.8 s, the longest a 162 ms pause in the middle of a batch
(ops/bench/batch_cost.py's loop, timed with ``gc.callbacks``). Frozen, and with a young threshold
of 50,000, the same loop collected nothing.

The price is memory: garbage in reference cycles waits for up to YOUNG_THRESHOLD net allocations
(a few MB) before it is collected.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000


def settle() -> None:
    """Move every object alive now into the permanent generation, which collections skip, and
    collect the young generation every YOUNG_THRESHOLD net allocations (the older ones keep their
    ratios). Call it once start-up is done; calling it again freezes what was built since."""
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD)
