"""Coincidence claims (:mod:`broker.enrich.claims`) on the real PostgreSQL.

With ``[lanes]`` a trigger–optical pair found by both enrich lanes is published by the
lane that claimed its version first; a replay by the same lane keeps it; a new version is
a new claim; two lanes claiming the same records at once split them, each version owned
by exactly one.
"""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from broker.archive import Archive
from broker.archive.raw import PostgresRawStore
from broker.enrich.claims import CLAIMS, claim_coincidences

pytestmark = pytest.mark.integration
PAIR = "grb-optical:gcn:swift:1253910+ztf:ZTF20aakyoez"


@pytest.fixture
def engine(fresh_db):
    archive = Archive(fresh_db, PostgresRawStore())
    archive.migrate()
    yield archive.engine
    archive.close()


def test_the_first_lane_owns_a_version_and_keeps_it_on_replay(engine):
    v1 = (PAIR, "ztf:ZTF20aakyoez:1105522281015015000")
    assert claim_coincidences(engine, [v1], "enrich.optical") == {v1}
    assert claim_coincidences(engine, [v1], "enrich.notices") == set()  # found too: left to the owner
    assert claim_coincidences(engine, [v1, v1], "enrich.optical") == {v1}  # a replayed batch is published again
    retracted = (PAIR, "gcn:swift:1253911")  # the pair retracted: a new version, a new claim
    assert claim_coincidences(engine, [retracted, v1], "enrich.notices") == {retracted}
    with engine.connect() as conn:
        rows = sorted(conn.execute(sa.select(CLAIMS.c.computed_from, CLAIMS.c.owner)).all())
    assert rows == [("gcn:swift:1253911", "enrich.notices"), ("ztf:ZTF20aakyoez:1105522281015015000", "enrich.optical")]
    assert claim_coincidences(engine, [], "enrich.optical") == set()


def test_two_lanes_claiming_at_once_split_the_versions(engine):
    keys = [(f"gw-optical:igwn:S{i:04d}+ztf:ZTF{i}", f"ztf:{i}") for i in range(300)]
    got: dict[str, set] = {}
    start = threading.Barrier(2)

    def lane(name: str, order: list) -> None:
        start.wait()
        mine: set = set()
        for k in range(0, len(order), 20):  # batches of 20, overlapping the other lane's
            mine |= claim_coincidences(engine, order[k:k + 20], name)
        got[name] = mine

    threads = [threading.Thread(target=lane, args=("enrich.notices", keys)),
               threading.Thread(target=lane, args=("enrich.optical", keys[::-1]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(got) == {"enrich.notices", "enrich.optical"}
    assert not got["enrich.notices"] & got["enrich.optical"]  # never both
    assert got["enrich.notices"] | got["enrich.optical"] == set(keys)  # never neither
