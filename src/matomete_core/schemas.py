"""JSON Schemas (draft 2020-12) of every public message, generated from ``messages``.

One file per message in ``schemas/``: an inbound task's argument is named after its task
(``matomete.set_limits`` → ``set_limits.json``, validation mode), an outbound body after its model
(``ChargeRecord`` → ``charge.json``, serialization mode, every field required since every field is
always sent). The files are generated, never edited by hand; a contract test fails on drift::

    python -m matomete_core.schemas [--check] [DIR]      # DIR defaults to ./schemas
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue

from . import messages

__all__ = ["BASE_URI", "DIALECT", "schema_name", "render_all", "main"]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
BASE_URI = "https://matomete.example/schemas/"
_WHERE = {  # CONTRACT.md: the queue of each inbound task, the destination of each outbound body
    "purchase": "queue `provider-events`", "cancel": "queue `provider-events`",
    "line_change": "queue `line-changes`", "set_restriction": "queue `customer-commands`",
    "set_limits": "queue `customer-commands`", "register_passport_id": "queue `customer-commands`",
    "update_registration": "queue `customer-commands`",
    "decision": "Kept 24 hours in the result backend.",
    "decision_event": "On `provider-results.<provider_id>`, for each of the provider's messages.",
    "subscription_ended": "On `provider-results.<provider_id>`, when a subscription ends unasked.",
    "charge": "On `billing-records`, for each charge.",
    "charge_voided": "On `billing-records`, for each voided charge.",
    "invoice": "On `billing-records`, for each invoice when a month closes.",
}


class _Generator(GenerateJsonSchema):
    def dict_schema(self, schema) -> JsonSchemaValue:  # type: ignore[no-untyped-def]
        json_schema = super().dict_schema(schema)
        if "patternProperties" in json_schema:  # constrained keys: the model rejects any other key
            json_schema["additionalProperties"] = False
        return json_schema

    def field_is_required(self, field, total: bool) -> bool:  # type: ignore[no-untyped-def]
        # an outbound body always carries every field, defaults included
        return self.mode == "serialization" or super().field_is_required(field, total)


def schema_name(model: type[BaseModel]) -> str:
    """``purchase`` for the task ``matomete.purchase``; ``decision_event`` for ``DecisionEvent``."""
    if task := getattr(model, "task", None):
        return task.removeprefix("matomete.")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", model.__name__).lower().removesuffix("_record")


def _schema(model: type[BaseModel], inbound: bool) -> dict:
    name = schema_name(model)
    schema = model.model_json_schema(mode="validation" if inbound else "serialization",
                                     schema_generator=_Generator)
    where = f"The one argument of the task `{model.task}` on {_WHERE[name]}." if inbound else _WHERE[name]
    schema.update({"$schema": DIALECT, "$id": f"{BASE_URI}{name}.json",
                   "title": model.task if inbound else name,
                   "description": " ".join(f"{model.__doc__ or ''} {where}".split())})
    return schema


def render_all() -> dict[str, str]:
    """File name → the exact text of its schema file."""
    models = [(m, True) for m in messages.INBOUND.values()] + [(m, False) for m in messages.OUTBOUND]
    return {f"{schema_name(m)}.json": json.dumps(_schema(m, inbound), sort_keys=True, indent=2,
                                                 ensure_ascii=False) + "\n" for m, inbound in models}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser("python -m matomete_core.schemas", description="Write schemas/*.json.")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 listing the files that differ")
    parser.add_argument("dir", nargs="?", type=Path, default=Path("schemas"), help="default: ./schemas")
    args = parser.parse_args(argv)
    expected, present = render_all(), {p.name: p for p in args.dir.glob("*.json")}
    drift = {name: "differs" if name in present else "missing" for name, text in expected.items()
             if name not in present or present[name].read_text(encoding="utf-8") != text}
    drift |= {name: "stale" for name in set(present) - set(expected)}
    if args.check:
        for name in sorted(drift):
            print(f"{args.dir / name}: {drift[name]}", file=sys.stderr)
        if drift:
            print("run `python -m matomete_core.schemas` to regenerate them", file=sys.stderr)
        return 1 if drift else 0
    args.dir.mkdir(parents=True, exist_ok=True)
    for name, what in sorted(drift.items()):
        if what == "stale":
            present[name].unlink()
        else:
            (args.dir / name).write_text(expected[name], encoding="utf-8", newline="\n")
    print(f"{args.dir}: {len(drift)} of {len(expected)} schemas written or removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
