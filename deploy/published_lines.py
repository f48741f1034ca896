"""Print what the broker published (or drafted) for one follow-up, from the outbox.

Used by deploy/quickstart.sh: ``python deploy/published_lines.py REQUEST_ID``. Runs
``mma-broker outbox show <channel>:followup:<REQUEST_ID> --json`` for the HERMES message
and the GCN Circular draft, and prints the message as it was sent (title, topic, text)
with where it went, and the draft (subject, body) with its state: a circular waits for
a person's approval (``mma-broker outbox approve ID``) before it is e-mailed.
"""

from __future__ import annotations

import json
import subprocess
import sys


def show(key: str) -> dict | None:
    proc = subprocess.run(["mma-broker", "outbox", "show", key, "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{key}: not in the outbox ({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no output'})")
        return None
    return json.loads(proc.stdout)


def main() -> None:
    rid = sys.argv[1]
    hermes = show(f"hermes:followup:{rid}")
    if hermes is not None:
        p, r = hermes["payload"], hermes.get("receipt") or {}
        where = (f"sent to topic {r.get('topic')} (partition {r.get('partition')}, offset {r.get('offset')}) "
                 f"with hop-client" if hermes["state"] == "sent" else f"state {hermes['state']}")
        print(f"HERMES message (outbox entry {hermes['id']}), {where}:")
        print(f"  title:     {p['title']}")
        print(f"  topic:     {p['topic']}   submitter: {p['submitter']}   authors: {p.get('authors') or '-'}")
        data = p.get("data") or {}
        limits = (data.get("extra_data") or {}).get("integral_spiacs") or {}
        print(f"  data:      event_id {data.get('event_id')}, {len(data.get('targets') or [])} target(s), "
              f"{len(data.get('photometry') or [])} photometry row(s), extra_data.integral_spiacs: "
              f"{', '.join(sorted(limits)) or '-'}")
        text = p["message_text"].strip().splitlines()
        print("  message_text (first lines):")
        for line in text[:3]:
            print(f"    {line[:150]}{'…' if len(line) > 150 else ''}")
    circular = show(f"gcn-circular:followup:{rid}")
    if circular is not None:
        p = circular["payload"]
        state = circular["state"]
        how = (f"waiting for approval: mma-broker outbox approve {circular['id']}" if state == "pending_approval"
               else state)
        print()
        print(f"GCN Circular draft (outbox entry {circular['id']}, {how}):")
        print(f"Subject: {p['subject']}")
        print()
        print(p["body"].rstrip())
    notice = show(f"gcn-notice:followup:{rid}")
    if notice is not None:
        r = notice.get("receipt") or {}
        print()
        print(f"GCN notice (JSON, GCN unified schema; outbox entry {notice['id']}): {notice['state']}"
              + (f" to topic {r.get('topic')} (partition {r.get('partition')}, offset {r.get('offset')})"
                 if notice["state"] == "sent" else ""))


if __name__ == "__main__":
    main()
