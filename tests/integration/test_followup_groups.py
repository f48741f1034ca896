"""One follow-up per trigger: the worker's grouping, superseding and plot artifacts.

Runs :class:`followup.worker.WorkerHandler` against the real PostgreSQL (a fresh
database of the session's embedded server, migrated) and a real archive with a
segment-file raw store; no Kafka (the stage loop around the handler is tested in
test_followup_e2e.py). Data sources are the bundled real files (GRB 230307A SPI-ACS
curve, orbit file of revolution 789) and an MMODA URL nobody listens on.

Events:

* the seven real Fermi GBM JSON notices of trigger 745121685 (gcn-schema examples),
  in their revision order; 2024-08-24 has no SPI-ACS curve in the bundled data;
* events *made for this test* at the GCN trigger time of GRB 230307A
  (2023-03-07T15:44:06.67, GCN Circular 33405): first without a position, then with
  the Swift-XRT afterglow position (GCN Circular 33429) — labelled ``test:`` and not
  alerts — so that a group whose follow-up found data is updated by a better
  localization.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from broker.archive import Archive
from broker.archive.raw import SegmentFileStore
from broker.enrich.localization import extract_localization
from broker.enrich.store import LocalizationStore
from broker.event import Event, PointLocalization
from broker.serde import Provenance
from broker.sources import decode
from followup.attitude import LocalOrbitFiles
from followup.availability import RetryPolicy
from followup.bundled import bundled_data_dir
from followup.cache import DirectoryCache
from followup.datasources import LocalFitsSource, MmodaSource
from followup.isgri import IsgriClient
from followup.messages import FollowupRequest, adhoc_event
from followup.service import FollowupSources
from followup.store import ArtifactStore, FollowupStore
from followup.worker import FollowupStats, WorkerHandler

pytestmark = pytest.mark.integration

GBM = Path(__file__).resolve().parents[1] / "data/gcn/gcn-schema/gcn/notices/fermi/gbm"
GBM_REVISIONS = ["trigger.alert", "trigger.flight1", "trigger.flight2", "trigger.flight3", "trigger.ground1",
                 "trigger.ground2", "trigger.final"]
GRB230307A_T0 = "2023-03-07T15:44:06.670Z"  # Fermi GBM trigger time, GCN Circular 33405
XRT = PointLocalization(ra=60.85935, dec=-75.3788, error_radius=3.4 / 3600, containment=0.9)  # GCN Circ. 33429
PARAMS = {"window_s": 300.0, "max_sky_samples": 1000}


@pytest.fixture()
def worker(fresh_db, tmp_path):
    archive = Archive(fresh_db, SegmentFileStore(tmp_path / "raw"), retry_deadline_s=5)
    archive.migrate()
    data = bundled_data_dir()
    mmoda = MmodaSource(url="http://127.0.0.1:9/dispatch-data", retry=RetryPolicy(attempts=1, base_delay_s=0.01))
    sources = FollowupSources(LocalFitsSource(data), LocalOrbitFiles(data), IsgriClient(mmoda))
    handler = WorkerHandler(store=FollowupStore(archive.engine), archive=archive, sources=sources,
                            cache=DirectoryCache(tmp_path / "cache"), results_topic="mma.followup.results",
                            provenance=Provenance("followup.worker", "test", "0" * 16), stats=FollowupStats(),
                            localizations=LocalizationStore(archive.engine))
    yield handler
    archive.close()


def _request(event: Event, by: str = "filter:followup-test", kind: str = "analyze") -> FollowupRequest:
    return FollowupRequest(kind=kind, event=event, analyses=("spiacs",), params=PARAMS if kind == "analyze" else {},
                           requested_by=by)


def _run(worker: WorkerHandler, request: FollowupRequest) -> tuple[list, str]:
    """Execute one request as the stage would, commit it; (records, note)."""
    records, _, info = worker.execute(request)
    worker.committed([type("H", (), {"info": info})()], [])
    return records, info[0]


def _made_event(localization, n: int) -> Event:
    """An event made for this test (not an alert): GRB 230307A's T0, revision ``n``."""
    return Event(id=f"test:grb230307a:{n}", source="gcn", messenger="em", mission="Fermi", instrument="GBM",
                 upstream_id="699896651", alert_type="update", time=GRB230307A_T0, localization=localization,
                 format="json")


def test_gbm_trigger_745121685_gives_one_result(worker):
    """Seven real revisions, no SPI-ACS data on 2024-08-24: one result; the others add nothing."""
    events = [decode((GBM / f"{name}.example.json").read_bytes())[0] for name in GBM_REVISIONS]
    notes = [_run(worker, _request(ev))[1] for ev in events]
    assert notes == ["result"] + ["skipped"] * 6
    store = worker.store
    rows = store.list(upstream_id="745121685", kinds=None)
    assert len(rows) == 7 and sum(r.kind == "result" for r in rows) == 1
    (result,) = [r for r in rows if r.kind == "result"]
    assert result.status == "no_data" and result.document["revision_reason"] == "first follow-up of this trigger"
    assert result.group_key == "gcn:fermi:745121685"
    for r in rows:
        if r.kind == "skipped":
            assert r.status == "unchanged" and r.document["same_as"] == result.request_id
    # a replay finds every request done, publishes nothing and analyses nothing
    assert [_run(worker, _request(ev)) for ev in events] == [([], "duplicate")] * 7
    assert worker.stats.results == 1 and worker.stats.revisions_skipped == 6


def test_better_localization_supersedes_and_plot_is_an_archive_artifact(worker):
    first, note = _run(worker, _request(_made_event(None, 1)))
    assert note == "result"
    same, note = _run(worker, _request(_made_event(None, 2)))  # same T0, still no position
    assert (same, note) == ([], "skipped")
    better, note = _run(worker, _request(_made_event(XRT, 3)))
    assert note == "result" and len(better) == 1
    import json

    old_doc, new_doc = json.loads(first[0].value), json.loads(better[0].value)
    assert new_doc["supersedes"] == old_doc["request_id"] and new_doc["superseded_by"] is None
    assert new_doc["revision_reason"].startswith("better localization")
    assert new_doc["status"] == "done" and new_doc["analyses"]["spiacs"]["detected"] is True
    stored_old = worker.store.get(old_doc["request_id"])
    assert stored_old.superseded_by == new_doc["request_id"]
    assert stored_old.document["superseded_by"] == new_doc["request_id"]
    assert worker.store.current("gcn:fermi:699896651").request_id == new_doc["request_id"]

    plot = new_doc["plot"]
    assert plot["media_type"] == "image/png" and plot["ref"] == f"mma-broker://artifact/sha256/{plot['sha256']}"
    png, media = ArtifactStore(worker.archive).get(plot["ref"])
    assert media == "image/png" and png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) == plot["bytes"]
    assert hashlib.sha256(png).hexdigest() == plot["sha256"]
    assert worker.store.get(new_doc["request_id"]).plot_png is None  # not in the result row
    # no path of this machine anywhere in the published message
    assert "/tmp" not in better[0].value.decode() and str(bundled_data_dir()) not in better[0].value.decode()

    # the retraction withdraws both results of the group; a later revision is not analysed
    retraction = Event(id="test:grb230307a:retraction", source="gcn", messenger="em", mission="Fermi",
                       upstream_id="699896651", alert_type="retraction", time=GRB230307A_T0, format="json")
    records, note = _run(worker, _request(retraction, kind="withdraw"))
    assert note == "withdrawal"
    assert sorted(json.loads(records[0].value)["withdrawn_request_ids"]) == sorted(
        [old_doc["request_id"], new_doc["request_id"]])
    late, note = _run(worker, _request(_made_event(XRT.model_copy(update={"error_radius": 1e-4}), 4)))
    assert (late, note) == ([], "skipped")


def test_t0_change_and_hand_requests_are_analysed_again(worker):
    _, note = _run(worker, _request(_made_event(XRT, 1)))
    assert note == "result"
    moved = _made_event(XRT, 2).model_copy(update={"time": "2023-03-07T15:44:08.670Z"})
    records, note = _run(worker, _request(moved))
    import json

    assert note == "result" and json.loads(records[0].value)["revision_reason"] == "T0 changed by 2 s"
    records, note = _run(worker, _request(_made_event(XRT, 3), by="cli"))
    assert note == "result" and json.loads(records[0].value)["revision_reason"] == "requested by hand (cli)"
    assert sum(r.superseded_by is None for r in worker.store.list(upstream_id="699896651")) == 1


def test_adhoc_request_forms_its_own_group(worker):
    event = adhoc_event(GRB230307A_T0, "GRB 230307A", XRT, note="GCN Circulars 33405, 33429")
    records, note = _run(worker, _request(event, by="cli"))
    import json

    doc = json.loads(records[0].value)
    assert note == "result" and doc["group"] == "user:GRB 230307A" and doc["source"] == "user"
    assert doc["analyses"]["spiacs"]["detected"] is True
    assert records[0].key == b"GRB 230307A"
    # the same request again is recognised as done
    assert _run(worker, _request(event, by="cli")) == ([], "duplicate")


def test_user_skymap_is_read_back_from_the_archive(worker):
    """An ad-hoc request's sky map travels as an artifact reference and the worker reads it."""
    from broker.skymap import read_multiorder, summarize_multiorder

    fits_bytes = (Path(__file__).resolve().parents[1] / "data/igwn/userguide/bayestar.multiorder.fits").read_bytes()
    artifact = ArtifactStore(worker.archive).put(fits_bytes, "application/fits")
    assert ArtifactStore(worker.archive).put(fits_bytes, "application/fits") == artifact  # stored once
    event = adhoc_event(GRB230307A_T0, "map test", summarize_multiorder(fits_bytes), artifact)
    uniq, density = worker._skymap(_request(event))
    want_uniq, want_density, _ = read_multiorder(fits_bytes)
    assert (uniq == want_uniq).all() and (density == want_density).all()


def test_lvk_json_and_voevent_forms_give_one_follow_up_and_one_withdrawal(worker):
    """LVK user-guide superevent MS181101ab: JSON and VOEvent of each alert, then both retractions."""
    igwn = Path(__file__).resolve().parents[1] / "data/igwn/userguide"
    forms = ["MS181101ab-preliminary.json", "MS181101ab-2-Preliminary.xml", "MS181101ab-initial.json",
             "MS181101ab-3-Initial.xml"]
    notes = [_run(worker, _request(decode((igwn / f).read_bytes())[0]))[1] for f in forms]
    assert notes == ["result", "skipped", "skipped", "skipped"]
    retractions = [decode((igwn / f).read_bytes())[0] for f in ("MS181101ab-retraction.json",
                                                                 "MS181101ab-5-Retraction.xml")]
    first, note = _run(worker, _request(retractions[0], kind="withdraw"))
    assert note == "withdrawal" and len(first) == 1
    assert _run(worker, _request(retractions[1], kind="withdraw")) == ([], "skipped")
    rows = worker.store.list(upstream_id="MS181101ab", kinds=None)
    assert sum(r.kind == "result" for r in rows) == 1 and sum(r.kind == "withdrawal" for r in rows) == 1
    assert all(r.withdrawn for r in rows if r.kind == "result")


def test_the_analysis_gets_the_stored_sky_map(worker, monkeypatch):
    """A request naming a stored localization is analysed on that map, read from the
    tables (no raw bytes). The event is *made for this test*: the real MS181101ab
    preliminary alert moved to GRB 230307A's T0 (where the bundled data have a light
    curve). The bundled orbit file (revolution 789) gives no attitude then, so the sky
    sampling itself is tested in test_followup_service.py; here the map handed to the
    analysis is checked."""
    import followup.worker as worker_module

    handed = []
    real_run = worker_module.run_followup

    def spy(event, analyses, sources, cache, params, skymap):
        handed.append(skymap)
        return real_run(event, analyses, sources, cache, params, skymap)

    monkeypatch.setattr(worker_module, "run_followup", spy)
    import json

    import numpy as np
    from ligo.skymap.io import read_sky_map

    path = Path(__file__).resolve().parents[1] / "data/igwn/userguide/MS181101ab-preliminary.json"
    real = decode(path.read_bytes())[0]
    ref = LocalizationStore(worker.archive.engine).put(real.id, extract_localization(real, path.read_bytes()))
    made = real.model_copy(update={"id": "test:ms181101ab-at-grb230307a", "time": GRB230307A_T0})
    request = FollowupRequest(kind="analyze", event=made, analyses=("spiacs",), params=dict(PARAMS, max_sky_samples=50),
                              requested_by="cli", group="test:ms181101ab", localization_ref=ref.id)
    uniq, density = worker._skymap(request)
    import base64

    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".fits") as tmp:  # the map inside the alert, read by ligo.skymap
        tmp.write(base64.b64decode(json.loads(path.read_bytes())["event"]["skymap"]))
        tmp.flush()
        want = read_sky_map(tmp.name, moc=True)
    order = np.argsort(want["UNIQ"])
    np.testing.assert_array_equal(uniq, np.asarray(want["UNIQ"])[order])
    np.testing.assert_allclose(density, np.asarray(want["PROBDENSITY"])[order], rtol=1e-12)
    (record,), note = _run(worker, request)
    doc = json.loads(record.value)
    assert note == "result" and doc["localization_ref"] == ref.id and doc["group"] == "test:ms181101ab"
    assert doc["status"] == "done" and doc["analyses"]["spiacs"]["detected"] is True
    (got_uniq, got_density), = handed
    assert (got_uniq == uniq).all() and (got_density == density).all()
    # without a stored map the analysis gets none (and falls back to the map's maximum)
    _run(worker, FollowupRequest(kind="analyze", event=made, analyses=("spiacs",),
                                 params=dict(PARAMS, max_sky_samples=49), requested_by="cli", group="test:2"))
    assert handed[1] is None
    # an unknown id is logged and treated the same way
    _run(worker, FollowupRequest(kind="analyze", event=made, analyses=("spiacs",),
                                 params=dict(PARAMS, max_sky_samples=48), requested_by="cli", group="test:3",
                                 localization_ref="sha256:" + "0" * 64))
    assert handed[2] is None
