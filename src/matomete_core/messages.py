"""Every inbound and outbound message of CONTRACT.md, as strict pydantic v2 models.

Strict means: unknown fields, integers sent as strings, naive timestamps, malformed ids and an
``occurred_at`` more than five minutes ahead of the deciding worker's clock are all invalid.
The clock comes from the caller: ``parse(Model, body, now=...)``.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)

__all__ = [
    "MAX_CLOCK_SKEW", "INBOUND", "OUTBOUND", "parse",
    "Purchase", "Cancel", "LineChange", "SetRestriction", "SetLimits",
    "RegisterPassportId", "UpdateRegistration",
    "Decision", "DecisionEvent", "SubscriptionEnded", "ChargeRecord", "ChargeVoided",
    "InvoiceItem", "Invoice", "InvoiceRecord",
]

MAX_CLOCK_SKEW = timedelta(minutes=5)
RFC3339 = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$"
MESSAGE_ID = r"^[A-Za-z0-9._:-]{1,128}$"
PASSPORT_ID = r"^[A-Za-z0-9]{4,60}$"
CUSTOMER_ID = r"^CAF[0-9]{10}$"
PROVIDER_ID = r"^[A-Za-z0-9_-]{1,32}$"
CONTENT_ID = r"^[A-Za-z0-9._-]{1,64}$"
ORDER_ID = r"^[\x21-\x7e]{1,64}$"
BILLING_ACCOUNT = r"^(0[0-9]{1,4}-[0-9]{1,4}-[0-9]{3,4}|00[0-9]{8})$"
MONTH = r"^[0-9]{4}-(0[1-9]|1[0-2])$"


def _rfc3339_text(value: Any) -> Any:
    if not isinstance(value, str) or not re.fullmatch(RFC3339, value):
        raise ValueError("must be an RFC 3339 timestamp with an explicit offset, e.g. 2026-11-03T10:15:00+09:00")
    return value


Timestamp = Annotated[
    AwareDatetime,
    Field(strict=False),
    BeforeValidator(_rfc3339_text),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": RFC3339}),
]
MessageId = Annotated[str, Field(pattern=MESSAGE_ID)]
PassportId = Annotated[str, Field(pattern=PASSPORT_ID)]
CustomerId = Annotated[str, Field(pattern=CUSTOMER_ID)]
ProviderId = Annotated[str, Field(pattern=PROVIDER_ID)]
ContentId = Annotated[str, Field(pattern=CONTENT_ID)]
OrderId = Annotated[str, Field(pattern=ORDER_ID)]
BillingAccount = Annotated[str, Field(pattern=BILLING_ACCOUNT)]
Month = Annotated[str, Field(pattern=MONTH)]
Yen = Annotated[int, Field(ge=0, le=10**12)]
Signature = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
AccessKey = Annotated[SecretStr, Field(min_length=1, max_length=128)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, hide_input_in_errors=True)


class _Inbound(_Message):
    task: ClassVar[str]
    secret_fields: ClassVar[frozenset[str]] = frozenset()

    message_id: MessageId
    occurred_at: Timestamp

    @model_validator(mode="after")
    def _not_in_the_future(self, info: ValidationInfo) -> "_Inbound":
        now = (info.context or {}).get("now")
        if now is not None and self.occurred_at > now + MAX_CLOCK_SKEW:
            raise ValueError("occurred_at is more than 5 minutes ahead of the worker's clock")
        return self


class Purchase(_Inbound):
    """`matomete.purchase`: a provider tells that a customer bought a content."""

    task: ClassVar[str] = "matomete.purchase"
    secret_fields: ClassVar[frozenset[str]] = frozenset({"signature"})

    provider_id: ProviderId
    order_id: OrderId
    passport_id: PassportId
    content_id: ContentId
    quantity: Annotated[int, Field(ge=1)] = 1
    unit_price: Yen | None = None
    signature: Signature


class Cancel(_Inbound):
    """`matomete.cancel`: a provider cancels (monthly flat) or voids (per use) one of its orders."""

    task: ClassVar[str] = "matomete.cancel"
    secret_fields: ClassVar[frozenset[str]] = frozenset({"signature"})

    provider_id: ProviderId
    order_id: OrderId
    signature: Signature


LineChangeKind = Literal[
    "relocation", "item_change", "menu_change", "line_cancellation", "succession", "rename",
    "move_to_east", "number_change", "billing_phone_change", "individual_billing", "wide_area_billing",
]
BILLING_NUMBER_CHANGES = frozenset({"number_change", "billing_phone_change", "individual_billing", "wide_area_billing"})


class LineChange(_Inbound):
    """`matomete.line_change`: the order system tells of a change to a line, effective at occurred_at."""

    task: ClassVar[str] = "matomete.line_change"

    customer_id: CustomerId
    change: LineChangeKind
    customer_id_changed: bool = False
    new_billing_account: BillingAccount | None = None
    new_access_service: Annotated[str, Field(pattern=r"^[a-z_]{1,32}$")] | None = None

    @model_validator(mode="after")
    def _billing_number_changes_name_the_account(self) -> "LineChange":
        if self.change in BILLING_NUMBER_CHANGES and self.new_billing_account is None:
            raise ValueError(f"new_billing_account is required for {self.change}")
        return self


class _CustomerCommand(_Inbound):
    secret_fields: ClassVar[frozenset[str]] = frozenset({"access_key"})

    customer_id: CustomerId
    access_key: AccessKey


class SetRestriction(_CustomerCommand):
    task: ClassVar[str] = "matomete.set_restriction"

    passport_id: PassportId | None  # null: the whole line
    restricted: bool


class SetLimits(_CustomerCommand):
    task: ClassVar[str] = "matomete.set_limits"

    line_limit: Yen | None = None
    passport_limits: dict[PassportId, Yen | None] | None = None

    @model_validator(mode="after")
    def _sets_something(self) -> "SetLimits":
        if self.line_limit is None and self.passport_limits is None:
            raise ValueError("at least one of line_limit and passport_limits is required")
        return self


class RegisterPassportId(_CustomerCommand):
    task: ClassVar[str] = "matomete.register_passport_id"

    passport_id: PassportId


class UpdateRegistration(_CustomerCommand):
    task: ClassVar[str] = "matomete.update_registration"

    passport_id: PassportId


INBOUND: dict[str, type[_Inbound]] = {
    m.task: m for m in (Purchase, Cancel, LineChange, SetRestriction, SetLimits,
                        RegisterPassportId, UpdateRegistration)
}


def parse(model: type[_Inbound], body: Any, *, now: datetime) -> _Inbound:
    """Validate a decoded JSON body; raises pydantic.ValidationError."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    return model.model_validate(body, context={"now": now})


# ---- outbound ---------------------------------------------------------------------------------

Status = Literal["accepted", "rejected", "held", "quarantined"]


class Decision(_Message):
    """Each task's return value."""

    message_id: str | None
    status: Status
    reason: str | None = None
    application_number: str | None = None
    billing_month: Month | None = None
    replayed: bool = False


class DecisionEvent(Decision):
    type: Literal["decision"] = "decision"
    event_id: str


class SubscriptionEnded(_Message):
    type: Literal["subscription_ended"] = "subscription_ended"
    event_id: str
    application_number: str
    order_id: str
    ended_at: AwareDatetime
    cause: Literal["line_change", "term_end"]


class ChargeRecord(_Message):
    type: Literal["charge"] = "charge"
    event_id: str
    application_number: str
    customer_id: CustomerId
    billing_account: BillingAccount
    passport_id: PassportId
    provider_id: ProviderId
    content_id: ContentId
    month: Month
    quantity: Annotated[int, Field(ge=1)]
    amount: Yen
    late: bool


class ChargeVoided(ChargeRecord):
    type: Literal["charge_voided"] = "charge_voided"  # type: ignore[assignment]


class InvoiceItem(_Message):
    provider_id: ProviderId
    provider_name: str
    content_id: ContentId
    content_name: str
    quantity: Annotated[int, Field(ge=1)]
    amount: Yen


class Invoice(_Message):
    billing_account: BillingAccount
    month: Month
    title: Literal["フレッツ・まとめて支払い料金"] = "フレッツ・まとめて支払い料金"
    total: Yen
    items: list[InvoiceItem]


class InvoiceRecord(Invoice):
    type: Literal["invoice"] = "invoice"
    event_id: str


OUTBOUND: tuple[type[_Message], ...] = (
    Decision, DecisionEvent, SubscriptionEnded, ChargeRecord, ChargeVoided, InvoiceRecord,
)
