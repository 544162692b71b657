"""`matomete demo` tells the guide's story on the embedded default: no servers, a real worker on
the in-memory broker, the month closed into the guide's 1,125-yen invoice."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_the_demo_runs_with_no_servers_and_ends_with_the_guides_invoice(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MATOMETE_")}
    env["MATOMETE_BROKER_URL"] = "redis://127.0.0.1:1/0"  # must be ignored: the demo needs no server
    done = subprocess.run([sys.executable, "-c", "from matomete_core.cli import main; main()", "demo", "--json"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(done.stdout)
    guide = [i for i in doc["invoices"] if i["billing_account"] == "06-1234-5678"]
    assert [(i["title"], i["total"]) for i in guide] == [("フレッツ・まとめて支払い料金", 1125)]
    reasons = [d["reason"] for d in doc["decisions"] if d["status"] == "rejected"]
    assert reasons == ["PASSPORT_LIMIT_EXCEEDED", "RESTRICTED", "LINE_TERMINATED"]
    assert doc["decisions"][-1]["replayed"] is True
    assert [e["cause"] for e in doc["subscriptions_ended"]] == ["line_change"]
    assert list(tmp_path.iterdir()) == []  # it leaves nothing behind
