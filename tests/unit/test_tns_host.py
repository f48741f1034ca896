"""Host galaxy of a TNS AT report from the cross-match, and TNS reports after a retraction.

The host: ZTF20aaelulu is SN 2020oi, 5.0 arcsec from the nucleus of M100 (NGC 4321), a
galaxy of the bundled 50MGC catalog (Ohlson et al. 2024). The record's cross-match is
what the enrich stage stores for a point (the catalog's nearest source, matched or
not); here it is computed with astropy over the whole catalog file, and the catalog
rows (distance, other columns) are read from the file, not from the code under test.

The reports stage's TNS path, with the in-memory outbox of test_hermes_reports: one
report per candidate and trigger, and the withdrawal of the candidate's group when its
report was sent (it stands, and the outbox entry says so).
"""

from __future__ import annotations

import dataclasses
import json
import math
from functools import lru_cache

import fastavro
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table

from broker.sinks.outbox import OutboxEntry
from followup.reports.stage import ReportsHandler, Withdraw, load_builders
from followup.reports.tns import HOST_MAX_OFFSET_KPC, host_galaxy, tns_report
from tests.conftest import DATA
from tests.unit.test_hermes_reports import OPTS, FakeOutbox, _Msg
from tests.unit.test_tns_report import NEW, SETTINGS, counterpart, record

ELULU = DATA / "ztf/kowalski/20200202/1105522281015015000.avro"  # ZTF20aaelulu = SN 2020oi
MGC = DATA / "catalogs/50MGC_catalog_short.fits"
C_KM_S = 299_792.458


@lru_cache(maxsize=1)
def _mgc() -> Table:
    return Table.read(MGC)


def _candidate() -> dict:
    with open(ELULU, "rb") as fh:
        return next(fastavro.reader(fh))["candidate"]


def _nearest(table: Table, ra: float, dec: float, ra_col: str = "ra", dec_col: str = "dec") -> tuple[int, float]:
    c = SkyCoord(np.asarray(table[ra_col], float), np.asarray(table[dec_col], float), unit="deg")
    sep = SkyCoord(ra, dec, unit="deg").separation(c).deg
    i = int(np.argmin(sep))
    return i, float(sep[i])


def _rows(table: Table, catalog: str, row: int, dist_col: str | None, name_col: str | None) -> dict:
    props = {k: (v.item() if hasattr(v, "item") else v) for k, v in zip(table.colnames, table[row])}
    props = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in props.items()}
    return {(catalog, row): {"dist_mpc": float(table[dist_col][row]) if dist_col else None, "name_col": name_col,
                             "properties": props}}


def _record(crossmatch: dict) -> dict:
    return {"id": "ztf:ZTF20aaelulu:1105522281015015000", "enrichment": {"crossmatch": crossmatch}}


def test_sn2020oi_in_m100_from_50mgc():
    c = _candidate()
    row, sep = _nearest(_mgc(), c["ra"], c["dec"])
    rows = _rows(_mgc(), "50MGC", row, "bestdist", "objname")
    rec = _record({"50MGC": {"kind": "point", "n_matched": 0, "matches": [],
                             "nearest": {"row": row, "separation_deg": sep}}})
    host = host_galaxy(rec, rows)
    t = _mgc()
    assert host is not None and host["name"] == "NGC4321" == str(t["objname"][row])
    assert host["catalog"] == "50MGC" and host["row"] == row
    assert host["separation_arcsec"] == pytest.approx(sep * 3600.0) and 4.9 < host["separation_arcsec"] < 5.0
    assert host["offset_kpc"] == pytest.approx(math.radians(sep) * float(t["bestdist"][row]) * 1000.0)
    assert host["redshift"] == pytest.approx(float(t["v_h"][row]) / C_KM_S) and host["redshift_column"] == "v_h"

    # not within the offset limit: no host
    assert host_galaxy(rec, rows, max_offset_kpc=host["offset_kpc"] * 0.99) is None
    # a catalog without distances (not a galaxy catalog) or a row not found: no host
    assert host_galaxy(rec, {("50MGC", row): {**rows[("50MGC", row)], "dist_mpc": None}}) is None
    assert host_galaxy(rec, {}) is None
    # a sky-map cross-match (a GW's) names no host
    assert host_galaxy(_record({"50MGC": {"kind": "skymap", "matches": []}}), rows) is None


def test_no_galaxy_near_ztf20aalseuk():
    """ZTF20aalseuk's nearest 50MGC galaxy is 18 arcmin away: 154 kpc projected, no host."""
    rec = record(NEW)
    c = rec["localization"]
    row, sep = _nearest(_mgc(), c["ra"], c["dec"])
    rows = _rows(_mgc(), "50MGC", row, "bestdist", "objname")
    offset = math.radians(sep) * float(_mgc()["bestdist"][row]) * 1000.0
    assert offset > 5 * HOST_MAX_OFFSET_KPC  # measured: 154 kpc
    rec = dict(rec, enrichment={**rec["enrichment"], "crossmatch": {
        "50MGC": {"kind": "point", "matches": [], "nearest": {"row": row, "separation_deg": sep}}}})
    assert host_galaxy(rec, rows) is None
    report = tns_report(rec, counterpart(NEW)[1], SETTINGS, host=host_galaxy(rec, rows))["at_report"]["0"]
    assert "host_name" not in report and "host_redshift" not in report and "Host galaxy" not in report["remarks"]


def test_glade_row_names_and_redshift_and_the_closest_of_two_catalogs():
    """GLADE+: its name column is a row number (``GLADE no``): the GWGC/HyperLEDA name is
    taken; the redshift is ``z_helio``. Of two catalogs, the smaller projected offset wins."""
    glade = Table.read(DATA / "catalogs/GLADE.csv")
    i = 0  # NGC4736 (M94), the file's first row
    ra, dec = float(glade["RA"][i]), float(glade["DEC"][i])
    rows = _rows(glade, "glade-head", i, "d_L", "GLADE no")
    near = {"kind": "point", "matches": [], "nearest": {"row": i, "separation_deg": 10 / 3600}}
    host = host_galaxy(_record({"glade-head": near}), rows)
    assert host["name"] == str(glade["GWGC name"][i]) == "NGC4736"
    assert host["redshift"] == pytest.approx(float(glade["z_helio"][i])) and host["redshift_column"] == "z_helio"
    assert host["offset_kpc"] == pytest.approx(math.radians(10 / 3600) * float(glade["d_L"][i]) * 1000.0)
    # the same galaxy in a second catalog, further away in projection: the GLADE row wins
    far = {"kind": "point", "matches": [], "nearest": {"row": 7, "separation_deg": 20 / 3600}}
    both = {**rows, ("other", 7): {"dist_mpc": float(glade["d_L"][i]), "name_col": "name",
                                   "properties": {"name": "M94 again", "z": 0.001}}}
    assert host_galaxy(_record({"other": far, "glade-head": near}), both)["catalog"] == "glade-head"
    assert (ra, dec) == pytest.approx((192.721451, 41.120152))


def test_report_carries_the_host_and_names_the_catalog():
    rec, raw = counterpart(NEW)
    host = {"name": "NGC4321", "catalog": "50MGC", "row": 12, "separation_arcsec": 6.4, "offset_kpc": 0.49,
            "dist_mpc": 15.8, "redshift": 0.0052504, "redshift_column": "v_h"}
    r = tns_report(json.loads(rec), raw, SETTINGS, host=host)["at_report"]["0"]
    assert r["host_name"] == "NGC4321" and r["host_redshift"] == 0.00525
    assert ("Host galaxy NGC4321 (50MGC row 12): 6.4 arcsec from the candidate, 0.5 kpc projected at 15.8 Mpc; "
            "heliocentric redshift 0.00525 from its v_h.") in r["remarks"]
    r = tns_report(json.loads(rec), raw, SETTINGS, host={**host, "redshift": None, "redshift_column": None})
    r = r["at_report"]["0"]
    assert r["host_name"] == "NGC4321" and "host_redshift" not in r and "no redshift in the catalog" in r["remarks"]


class _Outbox(FakeOutbox):
    """FakeOutbox with what the stage's TNS path also calls: ``list``, ``put(replaces=)``
    (withdraws the replaced entry if unsent), ``annotate``."""

    def put(self, key, channel, payload, *, source_event_id=None, group_key=None, requires_approval=False,
            replaces=None):
        new = key not in self.entries
        e = super().put(key, channel, payload, source_event_id=source_event_id, group_key=group_key,
                        requires_approval=requires_approval, replaces=replaces)
        old = self.entries.get(replaces) if new and replaces else None
        if old is not None and old.state in ("pending_approval", "queued", "failed"):
            self.entries[replaces] = dataclasses.replace(old, state="withdrawn", decision="replaced")
        return e

    def list(self, *, state=None, channel=None, group_key=None, limit=100):
        rows = [e for e in self.entries.values() if (channel is None or e.channel == channel)
                and (group_key is None or e.group_key == group_key) and (state is None or e.state == state)]
        return sorted(rows, key=lambda e: -e.id)[:limit]

    def annotate(self, id, by, decision):
        for k, e in self.entries.items():
            if e.id == id:
                assert e.state in ("sent", "sending", "unknown")
                self.entries[k] = dataclasses.replace(e, decided_by=by, decision=decision)
                return self.entries[k]
        raise AssertionError(f"no entry {id}")


def _sent(box: _Outbox, key: str, receipt: dict) -> None:
    box.entries[key] = OutboxEntry(**{**box.entries[key].__dict__, "state": "sent", "receipt": receipt})


def test_one_tns_report_per_candidate_and_trigger_and_it_stands_after_a_retraction():
    """Alerts of one candidate: a later one replaces the unsent TNS draft; after one was
    sent no other is drafted. The trigger retracted: the sent report stands (TNS has no
    retraction) and its entry says so; unsent entries of the group are withdrawn; HERMES
    messages sent get their retraction."""
    box = _Outbox()
    h = ReportsHandler(outbox=box, topics={"o": "optical", "c": "coincidence"},
                       builders=load_builders({"hermes", "tns"}), options=OPTS, settings=SETTINGS)
    rec = record(NEW)
    second, third = (dict(rec, id=rec["id"] + n) for n in ("-2", "-3"))  # later alerts of the candidate
    h.write([h.handle(_Msg("o", rec)), h.handle(_Msg("o", second))])
    cid = rec["enrichment"]["coincidence_records"][0]["id"]
    tns1, tns2 = f"tns:optical:{rec['id']}", f"tns:optical:{second['id']}"
    assert (box.entries[tns1].state, box.entries[tns1].decision) == ("withdrawn", "replaced")
    assert box.entries[tns2].state == "queued" and box.entries[tns2].group_key == cid
    h.write([h.handle(_Msg("o", rec))])  # read again (a replay): nothing changes
    assert box.entries[tns1].state == "withdrawn" and box.entries[tns2].state == "queued"

    receipt = {"pending": False, "status": "accepted", "report_id": "100000", "object_name": "2020abc"}
    _sent(box, tns2, receipt)
    hermes2 = f"hermes:optical:{second['id']}"
    _sent(box, hermes2, {"topic": "hermes.test", "partition": 0, "offset": 1,
                         "hop_uuid": "0f8fad5b-d9cb-469f-a165-70867728950e"})
    h.write([h.handle(_Msg("o", third))])
    assert f"tns:optical:{third['id']}" not in box.entries and h.stats.tns_already_sent == 1
    assert box.entries[f"hermes:optical:{third['id']}"].state == "queued"

    by = "gcn:swift:694215995:retraction"
    handled = h.handle(_Msg("c", {"id": cid, "kind": "grb-optical", "retracted": True, "retracted_by": by}))
    assert handled.write == [Withdraw(cid, by, f"a member was retracted ({by})")]
    h.write([handled])
    sent = box.entries[tns2]
    assert sent.state == "sent" and sent.receipt == receipt and sent.decided_by == by
    assert sent.decision == (f"a member was retracted ({by}) after this AT report was sent; TNS has no "
                             "retraction: the report stands (object 2020abc)")
    assert box.entries[f"hermes:optical:{third['id']}"].state == "withdrawn"
    assert f"hermes:retraction:{hermes2}" in box.entries and f"hermes:retraction:{tns2}" not in box.entries
    assert h.stats.standing == 1 and h.stats.retractions == 1
    assert "1 sent TNS report(s) standing (no retraction on TNS)" in h.stats.summary()
    assert "1 TNS report(s) not drafted" in h.stats.summary()


def test_outbox_list_line_shows_that_a_sent_report_stands():
    from broker.sinks.cli import _line

    e = OutboxEntry(id=7, key="tns:optical:ztf:ZTF20aakyoez:1", channel="tns", payload={}, state="sent",
                    receipt={"status": "accepted", "object_name": "2020abc"}, decided_by="gcn:swift:1:retraction",
                    decision="the source was retracted after this AT report was sent; TNS has no retraction: "
                             "the report stands (object 2020abc)")
    line = _line(e)
    assert "[the source was retracted after this AT report was sent; TNS has no retraction" in line
    assert "object_name=2020abc" in line
    assert "[" not in _line(dataclasses.replace(e, decision=None, decided_by=None))
