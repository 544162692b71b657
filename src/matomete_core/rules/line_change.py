"""Line changes (異動) — SPEC.md: does the service continue on the line, or does the line end?

The matrix, one row per change the order system sends; the column is whether the customer ID
was kept or changed with it. ``customer_id_changed`` matters only where the two columns differ
(relocation, item change); billing-number changes always continue.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["CONTINUE", "TERMINATE", "MATRIX", "effect", "changes_access_service", "keeps_representative"]

Effect = Literal["continue", "terminate"]
CONTINUE: Effect = "continue"
TERMINATE: Effect = "terminate"

#                        customer ID kept   customer ID changed
MATRIX: dict[str, tuple[Effect, Effect]] = {
    "relocation":           (CONTINUE,  TERMINATE),  # 設置場所変更
    "item_change":          (CONTINUE,  TERMINATE),  # 品目変更
    "menu_change":          (TERMINATE, TERMINATE),  # 光ネクスト⇔光プレミアム
    "line_cancellation":    (TERMINATE, TERMINATE),  # 解約
    "succession":           (TERMINATE, TERMINATE),  # 継承
    "rename":               (CONTINUE,  CONTINUE),   # 改称
    "move_to_east":         (TERMINATE, TERMINATE),  # NTT東日本エリアへの移転: as a cancellation
    # billing-number changes: the charges go to the new billing account from the effective month
    "number_change":        (CONTINUE,  CONTINUE),   # 改番
    "billing_phone_change": (CONTINUE,  CONTINUE),   # 請求電話番号を同一名義・同一場所の別回線へ
    "individual_billing":   (CONTINUE,  CONTINUE),   # 00から始まる10桁の個別請求番号へ
    "wide_area_billing":    (CONTINUE,  CONTINUE),   # フレッツ広域一括請求へ
}


def effect(change: str, customer_id_changed: bool) -> Effect:
    """``"continue"`` or ``"terminate"``; KeyError for a change not in the matrix."""
    kept, changed = MATRIX[change]
    return changed if customer_id_changed else kept


def changes_access_service(change: str) -> bool:
    """An item change that continues may move the line to another access service (品目変更);
    any other change leaves the access service as it is (a menu change terminates the line)."""
    return change == "item_change"


def keeps_representative(change: str) -> bool:
    """A billing-number change keeps the line in its おまとめ group, except the switch to an
    individual (個別請求) number, which is billed on its own."""
    return change != "individual_billing"
