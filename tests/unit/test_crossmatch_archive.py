"""Cross-match results archived with the Event (broker.enrich.matchstore): the rows the
enrich stage hands to its durable write equal what it publishes on mma.events.enriched.

Real alerts and a real catalog: the AGILE ground alert of the GCN schema examples
(3 deg error circle) against 4FGL-DR4 (tests/data/catalogs). The stage runs with the
in-memory stores of tests/unit/test_enrich_stage.py; the table itself is tested on
PostgreSQL in tests/integration/test_crossmatch_db.py.
"""

from __future__ import annotations

import json

from broker.enrich.config import EnrichSettings
from broker.enrich.matchstore import crossmatch_rows
from broker.pipeline.enrich import EnrichHandler
from tests.conftest import DATA
from tests.unit.test_enrich_stage import (  # noqa: F401 - the fixture and helpers of the stage's own tests
    GW_JSON, PROV, MemArchive, MemGroups, MemLocalizations, _fgl, docs, feed,
)

AGILE = DATA / "gcn/gcn-schema-pr161-classic/gcn/notices/classic/agile/Ground_alert.example.json"


class Cats:
    def __init__(self, cat):
        self.cat = cat

    def catalogs(self):
        return [self.cat]

    def labels(self, c, rows):
        return {int(r): f"src{int(r)}" for r in rows}


def _stage(catalogs=None):
    locs, groups, archive = MemLocalizations(), MemGroups(), MemArchive()
    calls = []
    h = EnrichHandler(localizations=locs, groups=groups, archive=archive, settings=EnrichSettings(top_n=5),
                      enriched_topic="mma.events.enriched", coincidences_topic="mma.coincidences", provenance=PROV,
                      catalogs=catalogs, write_batch=lambda events, rows: calls.append((list(events), list(rows))))
    h.mem = (locs, groups, archive)
    return h, calls


def test_crossmatch_rows_keep_catalog_results_only():
    xm = {"4FGL": {"kind": "point", "n_matched": 11, "matches": [{"row": 3}]},
          "50MGC": {"kind": "skymap", "n_inside": 35, "matches": []},
          "error": "a map that could not be prepared"}
    rows = crossmatch_rows("ev1", xm, "sha256:ab")
    assert [(r["catalog"], r["kind"], r["n_matched"]) for r in rows] == [("4FGL", "point", 11), ("50MGC", "skymap", 35)]
    assert all(r["event_id"] == "ev1" and r["localization_id"] == "sha256:ab" for r in rows)
    assert rows[0]["result"] == xm["4FGL"] and rows[0]["result"] is not xm["4FGL"]


def test_stage_writes_what_it_publishes_in_one_call_per_batch():
    h, calls = _stage(Cats(_fgl()))
    (handled,) = feed(h, AGILE.read_bytes())
    (doc,) = docs([handled], "mma.events.enriched")
    ((events, rows),) = calls  # one durable write: the point position and the cross-match together
    assert [e.id for e in events] == [doc["id"]]
    (row,) = rows
    published = doc["enrichment"]["crossmatch"]["4FGL"]
    assert row["event_id"] == doc["id"] and row["catalog"] == "4FGL" and row["kind"] == "point"
    assert row["n_matched"] == published["n_matched"] == 11  # the AGILE circle holds 11 4FGL sources at 90 %
    assert row["localization_id"] == doc["enrichment"]["localization"]["id"]
    assert json.loads(json.dumps(row["result"])) == published and len(published["matches"]) == 5  # top_n


def test_nothing_to_write_without_catalogs_or_a_point():
    h, calls = _stage(None)
    (handled,) = feed(h, GW_JSON.read_bytes())  # a sky map, no catalog configured: no position, no rows
    assert handled.write is None and calls == []
    h2, calls2 = _stage(None)
    feed(h2, AGILE.read_bytes())  # a point without catalogs: its position only
    ((events, rows),) = calls2
    assert len(events) == 1 and rows == []
