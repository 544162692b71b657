"""``matomete catalog load`` and ``matomete lines load``: idempotent upserts of operator files.

A bad file changes nothing and raises InvalidFile with one line naming the record and the field.
Access keys are hashed (scrypt) and signing secrets encrypted before anything is stored. Limits
and restrictions are the customer's once a line or ID exists: a reload does not undo them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from sqlalchemy import Engine, select

from matomete_core.adapters.database import upsert
from matomete_core.adapters.tables import contents, line_billing, lines, passport_ids, providers
from matomete_core.config import Settings
from matomete_core.errors import InvalidFile
from matomete_core.messages import BillingAccount, ContentId, CustomerId, PassportId, ProviderId, Timestamp, Yen
from matomete_core.security import SecretBox, hash_access_key

BASE_MONTH = "0000-00"  # a line's billing account from its load on, until a billing-number change
# what the customer controls once a line or ID exists: a reload of the operator's file keeps it
CUSTOMER_SETTINGS = frozenset({"line_limit", "restricted", "limit"})


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ContactRecord(_Record):
    url: str | None = None
    phone: str | None = None
    hours: str | None = None


class ContentRecord(_Record):
    content_id: ContentId
    name: Annotated[str, Field(min_length=1, max_length=200)]
    price_type: Literal["monthly_flat", "per_use"]
    unit_price: Yen
    term_months: Annotated[int, Field(ge=1, le=1200)] | None = None


class ProviderRecord(_Record):
    provider_id: ProviderId
    name: Annotated[str, Field(min_length=1, max_length=200)]
    signing_secret: Annotated[SecretStr, Field(min_length=8)]
    previous_signing_secret: SecretStr | None = None  # still valid while a rotation is under way
    active: bool = True
    contact: ContactRecord = ContactRecord()
    contents: list[ContentRecord] = []


class CatalogFile(_Record):
    providers: list[ProviderRecord]


class PassportRecord(_Record):
    passport_id: PassportId
    status: Literal["registered", "registering"]
    limit: Yen | None = None
    restricted: bool = False
    registered_at: Timestamp | None = None


class LineRecord(_Record):
    customer_id: CustomerId
    access_service: Annotated[str, Field(pattern=r"^[a-z_]{1,32}$")]
    access_key: Annotated[SecretStr, Field(min_length=1, max_length=128)]
    billing_account: BillingAccount
    omatome_representative: BillingAccount | None = None
    line_limit: Yen | None = None
    restricted: bool = False
    passport_ids: list[PassportRecord] = []


class LinesFile(_Record):
    lines: list[LineRecord]


def _read(path: str | Path, model: type[BaseModel], key: str, ident: str) -> Any:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidFile(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidFile(f"{path}: not a JSON document ({exc})") from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False, include_context=False)[0]
        loc = list(err["loc"])
        where = ".".join(str(p) for p in loc) or "file"
        if len(loc) >= 2 and loc[0] == key and isinstance(loc[1], int):
            try:
                record = json.dumps(raw[key][loc[1]].get(ident), ensure_ascii=False)[:80]
                where = f"{key}[{loc[1]}] ({ident}={record}): " + ".".join(str(p) for p in loc[2:])
            except (AttributeError, IndexError, KeyError, TypeError):
                pass
        raise InvalidFile(" ".join(f"{path}: {where}: {err['msg']}".split())) from None


def load_catalog(engine: Engine, box: SecretBox, path: str | Path) -> dict[str, int]:
    catalog: CatalogFile = _read(path, CatalogFile, "providers", "provider_id")
    seen = set()
    for p in catalog.providers:
        if p.provider_id in seen:
            raise InvalidFile(f"{path}: providers ({p.provider_id}): provider_id appears twice")
        seen.add(p.provider_id)
        ids = [c.content_id for c in p.contents]
        if len(ids) != len(set(ids)):
            raise InvalidFile(f"{path}: providers ({p.provider_id}).contents: a content_id appears twice")
    with engine.begin() as conn:
        for p in catalog.providers:
            secrets = [p.signing_secret.get_secret_value()]
            if p.previous_signing_secret is not None:
                secrets.append(p.previous_signing_secret.get_secret_value())
            upsert(conn, providers, [{
                "provider_id": p.provider_id, "name": p.name, "signing_secrets": box.seal(secrets),
                "contact_url": p.contact.url, "contact_phone": p.contact.phone,
                "contact_hours": p.contact.hours, "active": p.active}], ["provider_id"])
            upsert(conn, contents, [{
                "provider_id": p.provider_id, "content_id": c.content_id, "name": c.name,
                "price_type": c.price_type, "unit_price": c.unit_price, "term_months": c.term_months,
            } for c in p.contents], ["provider_id", "content_id"])
    return {"providers": len(catalog.providers), "contents": sum(len(p.contents) for p in catalog.providers)}


def load_lines(engine: Engine, settings: Settings, path: str | Path) -> dict[str, int]:
    data: LinesFile = _read(path, LinesFile, "lines", "customer_id")
    owner: dict[str, str] = {}
    for i, line in enumerate(data.lines):
        limit = settings.default_line_limit if line.line_limit is None else line.line_limit
        where = f"{path}: lines[{i}] (customer_id={line.customer_id})"
        if limit > settings.max_line_limit:
            raise InvalidFile(f"{where}: line_limit: {limit} is above the maximum {settings.max_line_limit}")
        own = sum(p.limit for p in line.passport_ids if p.limit is not None)
        if own > limit:
            raise InvalidFile(f"{where}: passport_ids: the IDs' limits sum to {own}, above the line limit {limit}")
        for p in line.passport_ids:
            if owner.setdefault(p.passport_id, line.customer_id) != line.customer_id or \
                    sum(1 for q in line.passport_ids if q.passport_id == p.passport_id) > 1:
                raise InvalidFile(f"{where}: passport_ids ({p.passport_id}): appears twice in the file")
    with engine.begin() as conn:
        taken = dict(conn.execute(select(passport_ids.c.passport_id, passport_ids.c.customer_id).where(
            passport_ids.c.passport_id.in_(list(owner)))).all()) if owner else {}
        for pid, customer in taken.items():
            if owner[pid] != customer:
                raise InvalidFile(f"{path}: passport_id {pid}: already belongs to line {customer}")
        for line in data.lines:
            upsert(conn, lines, [{
                "customer_id": line.customer_id, "access_service": line.access_service,
                "access_key_hash": hash_access_key(line.access_key.get_secret_value()),
                "line_limit": settings.default_line_limit if line.line_limit is None else line.line_limit,
                "restricted": line.restricted}], ["customer_id"], insert_only=CUSTOMER_SETTINGS)
            upsert(conn, line_billing, [{
                "customer_id": line.customer_id, "from_month": BASE_MONTH,
                "billing_account": line.billing_account,
                "omatome_representative": line.omatome_representative}], ["customer_id", "from_month"])
            upsert(conn, passport_ids, [{
                "passport_id": p.passport_id, "customer_id": line.customer_id, "status": p.status,
                "limit": p.limit, "restricted": p.restricted, "registered_at": p.registered_at,
            } for p in line.passport_ids], ["passport_id"], insert_only=CUSTOMER_SETTINGS)
    return {"lines": len(data.lines), "passport_ids": len(owner)}
