"""The follow-up service on real data: GRB 230307A SPI-ACS curve, orbit file of revolution 789,
real alerts (sky map embedded in an IGWN alert, a notice after the end of the mission).

tests/data holds no alert for GRB 230307A, so the detection case uses an Event
*constructed from the light curve's own header* (T0 = MJDREF + TIMEZERO, no position);
it is labelled as such and is not an alert.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time

from broker.event import Event
from broker.sources import decode
from followup.attitude import LocalOrbitFiles
from followup.availability import RetryPolicy
from followup.bundled import bundled_data_dir
from followup.cache import DirectoryCache
from followup.datasources import LocalFitsSource, MmodaSource
from followup.isgri import IsgriClient
from followup.service import FollowupSources, run_followup
from followup.steps import sky_directions

DATA = Path(__file__).resolve().parents[1] / "data"
INTEGRAL = bundled_data_dir()
LC = INTEGRAL / "spiacs_lc_GRB230307A.fits"
ORBIT = INTEGRAL / "sc_orbit_param.fits.gz"
GRB230307A_T0 = Time("2023-03-07T15:44:06.67", scale="utc")  # GCN trigger time of GRB 230307A


def _header_event() -> Event:
    """An Event built from the light curve's header (constructed for this test, not an alert)."""
    h = fits.getheader(LC, "RATE")
    t0 = Time(h["MJDREF"], format="mjd", scale=h["TIMESYS"].lower()) + h["TIMEZERO"] * u.s
    return Event(id="test:spiacs-lc-header", source="gcn", messenger="em", mission="INTEGRAL",
                 instrument="SPI-ACS", upstream_id="spiacs-lc-header", alert_type="spiacs",
                 time=t0.utc.isot[:23] + "Z", format="json")


def _sources(mmoda_attempts: int = 1) -> FollowupSources:
    mmoda = MmodaSource(url="http://127.0.0.1:9/dispatch-data", retry=RetryPolicy(attempts=mmoda_attempts,
                                                                                  base_delay_s=0.01))
    return FollowupSources(LocalFitsSource(INTEGRAL), LocalOrbitFiles(INTEGRAL), IsgriClient(mmoda))


def test_detection_and_cache_hit(tmp_path):
    event = _header_event()
    cache = DirectoryCache(tmp_path)
    first = run_followup(event, ["spiacs"], _sources(), cache)
    assert first.status == "done"
    spi = first.analyses["spiacs"]
    assert spi["detected"] and spi["best_snr"] > 100
    best = Time(spi["best_time"].rstrip("Z"), scale="utc")
    assert 0 < (best - GRB230307A_T0).to_value("s") < 15  # the burst starts at the GCN trigger time
    assert spi["directions"]["method"].startswith("none")  # no attitude for 2023 in the rev-789 file
    # the file covers -180.7..+359.3 s: fetched for +/-550 s, searched where it can be, flagged partial
    assert spi["coverage"] == "partial" and spi["requested_search_window_s"] == [-300.0, 300.0]
    assert spi["search_window_s"][0] > -300.0 and "partial coverage" in first.summary_text
    # the perigee check ran and says why it could not decide: never silent
    assert first.analyses["coverage"]["perigee_check"].startswith("not run: no orbit data for T0")
    assert "perigee" in first.summary_text and "anywhere in the window" not in first.summary_text
    assert first.plot_png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "SPI-ACS" in first.summary_text and "significant" in first.summary_text
    steps = [r.step for r in first.lineage]
    assert steps == ["integral.coverage", "attitude.pointing", "lightcurve.fetch", "spiacs.analysis"]
    assert not any(r.hit for r in first.lineage) and all(r.cached for r in first.lineage)

    second = run_followup(event, ["spiacs"], _sources(), cache)
    assert [r.hit for r in second.lineage] == [True] * 4
    assert [r.key for r in second.lineage] == [r.key for r in first.lineage]
    assert second.analyses == first.analyses and second.plot_png == first.plot_png
    assert cache.get(first.lineage[-1].key).lineage.hit_count == 1


def test_outside_mission_is_no_data_not_error(tmp_path):
    event = decode((DATA / "voevent/gwcelery/svom_catalog_gcn.xml").read_bytes())[0]
    assert Time(event.time.rstrip("Z")) > Time("2025-02-28T23:59:59")
    cache = DirectoryCache(tmp_path)
    result = run_followup(event, ["spiacs", "isgri"], _sources(), cache)
    assert result.status == "no_data" and result.plot_png is None
    assert result.analyses["spiacs"]["kind"] == "outside_mission"
    assert "2025-02-28" in result.analyses["spiacs"]["reason"]
    assert [r.step for r in result.lineage] == ["integral.coverage"]
    again = run_followup(event, ["spiacs", "isgri"], _sources(), cache)
    assert again.lineage[0].hit and again.analyses == result.analyses


def test_ibis_visible_and_mmoda_unreachable(tmp_path):
    """A constructed event on the pointing axis at the middle of the orbit file."""
    with fits.open(ORBIT) as hdul:
        table = hdul["INTL-ORBI-SCP"]
        mid = len(table.data) // 2
        ra, dec = float(table.data["RA_SCX"][mid]), float(table.data["DEC_SCX"][mid])
    from followup.attitude import OrbitTable

    # sample time from the header clock (OBT anchored on ERTFIRST, checked in test_attitude)
    t_mid = Time(OrbitTable.read(ORBIT).mjd_utc[mid], format="mjd", scale="utc")
    event = Event(id="test:on-axis", source="gcn", messenger="em", mission="INTEGRAL", instrument="IBAS",
                  upstream_id="on-axis", alert_type="wakeup", time=t_mid.isot[:23] + "Z",
                  localization={"type": "point", "ra": ra, "dec": dec}, format="json")
    result = run_followup(event, ["spiacs", "isgri"], _sources(), DirectoryCache(tmp_path))
    vis = result.analyses["ibis_visibility"]
    assert vis["fully_coded_prob"] == 1.0 and vis["off_axis_deg"] < 0.1
    assert result.analyses["spiacs"]["kind"] == "data_gap"
    products = result.analyses["isgri"]["products"]
    assert set(products) == {"isgri_image", "isgri_lc", "isgri_spectrum"}
    assert all(p["kind"] == "service_unavailable" for p in products.values())
    isgri_step = [r for r in result.lineage if r.step == "isgri.products"][0]
    assert not isgri_step.cached  # a transient failure is not cached: the next request retries
    assert "ISGRI" in result.summary_text and "unreachable" in result.summary_text


def test_skymap_directions(tmp_path):
    """Sky directions sampled from the map the enrich stage extracts (and stores) for an alert."""
    from ligo.skymap.io import read_sky_map

    from broker.enrich.localization import extract_localization

    path = DATA / "igwn/userguide/MS181101ab-preliminary.json"
    raw = path.read_bytes()
    event = decode(raw)[0]
    sky = extract_localization(event, raw)
    uniq, density = sky.uniq, sky.probdensity
    blob = base64.b64decode(json.loads(raw)["event"]["skymap"])
    ref_path = tmp_path / "map.fits"
    ref_path.write_bytes(blob)
    ref = read_sky_map(str(ref_path), moc=True)
    np.testing.assert_array_equal(uniq, ref["UNIQ"])
    np.testing.assert_allclose(density, ref["PROBDENSITY"])

    from followup.attitude import OrbitTable

    pointing = OrbitTable.read(ORBIT).pointing_at(OrbitTable.read(ORBIT).start)
    dirs, info = sky_directions(pointing, event.localization, (uniq, density), max_samples=50)
    import astropy_healpix as ah

    level, _ = ah.uniq_to_level_ipix(np.asarray(ref["UNIQ"]))
    prob = np.asarray(ref["PROBDENSITY"]) * 4 * np.pi / (12 * 4.0 ** level)
    top = np.sort(prob)[::-1][:50]
    assert len(dirs) == 50 and info["method"] == "skymap"
    assert info["covered_probability"] == pytest.approx(top.sum() / prob.sum())
    assert [d.probability for d in dirs] == pytest.approx(list(top))
    assert all(0 <= d.theta_deg <= 180 for d in dirs)


class _Spy(LocalFitsSource):
    """The local source, recording the half-span each fetch asks for."""

    spans: list = []

    def fetch_fits(self, t0, window_s, instrument="spi_acs"):
        type(self).spans.append(window_s)
        return super().fetch_fits(t0, window_s, instrument)


def test_fetch_asks_for_the_search_window_plus_background(tmp_path):
    from followup.excess import ExcessSearchParams

    _Spy.spans = []
    sources = FollowupSources(_Spy(INTEGRAL), LocalOrbitFiles(INTEGRAL), None)
    result = run_followup(_header_event(), ["spiacs"], sources, DirectoryCache(tmp_path))
    assert _Spy.spans == [ExcessSearchParams().required_half_span_s] == [550.0]
    assert result.status == "done"


def _rev789_event(t0: str) -> Event:
    return Event(id=f"test:rev789-{t0}", source="gcn", messenger="em", mission="INTEGRAL", instrument="IBAS",
                 upstream_id="rev789", alert_type="test", time=t0, format="json",
                 localization={"type": "point", "ra": 10.0, "dec": 20.0})


def test_perigee_passage_of_revolution_789_is_no_data(tmp_path):
    """Revolution 789 began at perigee 2009-03-30T04:51:40; the belts were left at 08:55."""
    result = run_followup(_rev789_event("2009-03-30T05:30:00.000Z"), ["spiacs", "isgri"], _sources(),
                          DirectoryCache(tmp_path))
    assert result.status == "no_data" and [r.step for r in result.lineage] == ["integral.coverage"]
    spi = result.analyses["spiacs"]
    assert spi["kind"] == "data_gap" and "perigee passage" in spi["reason"]
    assert "revolution 789, phase 0.00" in spi["reason"]
    assert "perigee passage" in result.summary_text


def test_apogee_of_revolution_789_passes_the_perigee_check(tmp_path):
    result = run_followup(_rev789_event("2009-04-01T02:30:00.000Z"), ["spiacs"], _sources(), DirectoryCache(tmp_path))
    check = result.analyses["coverage"]["perigee_check"]
    assert check.startswith("passed: orbit file sc_orbit_param.fits.gz: revolution 789, phase 0.63")
    assert result.analyses["spiacs"]["kind"] == "data_gap"  # no SPI-ACS file for 2009 is bundled
    assert "Radiation-belt (perigee) check: passed" in result.summary_text


def test_results_name_no_host_path(tmp_path):
    import os

    here = os.path.abspath(os.sep.join(str(INTEGRAL).split(os.sep)[:3]))
    for event in (_header_event(), _rev789_event("2009-04-01T02:30:00.000Z"),
                  _rev789_event("2023-03-07T16:30:00.000Z")):
        doc = json.dumps(run_followup(event, ["spiacs", "isgri"], _sources(), DirectoryCache(tmp_path)).to_dict())
        assert str(INTEGRAL) not in doc and here not in doc and str(tmp_path) not in doc
