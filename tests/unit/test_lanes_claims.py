"""A trigger–optical pair both enrich lanes find is published once (``EnrichHandler(claim=...)``).

Two loops over one set of in-memory stores, as two lane processes over one database
(test_lanes' ``_two_lanes``), with a claim table shared by both (the real one,
:func:`broker.enrich.claims.claim_coincidences`, is tested on PostgreSQL in
tests/integration/test_coincidence_claims_db.py).
"""

from __future__ import annotations

from broker.enrich.config import EnrichSettings
from broker.pipeline.enrich import EnrichHandler
from tests.unit.test_enrich_stage import CODEC, PROV, MemGroups, MemLocalizations, Msg, docs
from tests.unit.test_lanes import TimedArchive, _gw_events, _pairs, both_lanes_find

KEY = "gw-optical:igwn:MS181101ab+ztf:ZTF18test1"


class Claims:
    """The claim table: (id, computed_from) → owner; the first claim wins."""

    def __init__(self):
        self.owner: dict = {}
        self.calls = 0

    def for_(self, name):
        def claim(keys):
            self.calls += 1
            for k in keys:
                self.owner.setdefault(k, name)
            return {k for k in keys if self.owner[k] == name}
        return claim


def _lanes(claims):
    locs, groups, archive = MemLocalizations(), MemGroups(), TimedArchive()
    out = [EnrichHandler(localizations=locs, groups=groups, archive=archive, settings=EnrichSettings(),
                         enriched_topic="mma.events.enriched", coincidences_topic="mma.coincidences",
                         provenance=PROV, index_positions=locs.index, cross_lane=True, recheck_optical=recheck,
                         claim=claims.for_(name))
           for name, recheck in (("enrich.notices", False), ("enrich.optical", True))]
    return (*out, locs, archive)


def _both_find(claims):
    notices, optical, locs, archive = _lanes(claims)
    h_gw, h_cand, _, cand = both_lanes_find(notices, optical, locs, archive)
    return notices, optical, h_gw, h_cand, cand


def test_a_pair_both_lanes_find_is_published_by_the_lane_that_claimed_it():
    claims = Claims()
    notices, optical, h_gw, h_cand, cand = _both_find(claims)
    assert _pairs(h_cand) == [(KEY, cand.id)]  # the optical lane wrote first: it claimed the version
    assert _pairs(h_gw) == [(KEY, cand.id)]  # handled, not yet written
    notices.write([h_gw])
    assert _pairs(h_gw) == []  # the notices lane leaves it to the owner
    # both Events' enriched records still list the pair
    for h in (h_gw, h_cand):
        (enr,) = docs([h], "mma.events.enriched")
        assert enr["enrichment"]["coincidences"] == [KEY]
    notices.committed([h_gw], [])
    optical.committed([h_cand], [])
    assert notices.stats.coincidences["gw-optical"] == 0 and notices.stats.left_to_other_lane == 1
    assert optical.stats.coincidences["gw-optical"] == 1 and optical.stats.left_to_other_lane == 0
    assert "1 left to the other lane" in notices.stats.summary()


def test_the_owner_publishes_its_version_again_when_its_batch_is_replayed():
    """A crash after the claim, before the Kafka transaction: the same lane handles the batch
    again (its offsets were not committed) and publishes the record; the other lane still not."""
    claims = Claims()
    notices, optical, h_gw, h_cand, cand = _both_find(claims)
    again = optical.handle(h_cand.msg if hasattr(h_cand, "msg") else Msg(CODEC.encode(cand, PROV)))
    optical.write([again])
    assert _pairs(again) == [(KEY, cand.id)]
    notices.write([h_gw])
    assert _pairs(h_gw) == []
    assert claims.owner == {(KEY, cand.id): "enrich.optical"}


def test_records_of_other_kinds_and_batches_without_pairs_are_not_claimed():
    claims = Claims()
    notices, optical, locs, archive = _lanes(claims)
    (gw,) = _gw_events(archive)
    h = notices.handle(Msg(CODEC.encode(gw, PROV)))
    notices.write([h])
    assert claims.calls == 0  # no trigger–optical record: no database round trip
