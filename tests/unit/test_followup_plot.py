"""The light-curve figure a scientist reads: on the real GRB 230307A SPI-ACS curve (detection, partial
coverage), a quiet T0 before it, and a T0 whose background holds the burst."""

from __future__ import annotations

import astropy.units as u
import pytest
from astropy.time import Time

from followup.bundled import bundled_data_dir
from followup.excess import ExcessSearchParams
from followup.lightcurve import read_ogip_lightcurve
from followup.plot import lightcurve_figure, plot_lightcurve
from followup.spiacs import SpiAcsParams, run_spiacs_analysis

GRB = Time("2023-03-07T15:44:06.650", scale="utc")  # Fermi-GBM trigger time of GRB 230307A
XLABEL = "time at INTEGRAL − T0 (s)"


@pytest.fixture(scope="module")
def curve():
    return read_ogip_lightcurve(bundled_data_dir() / "spiacs_lc_GRB230307A.fits", t0=GRB)


def _texts(figure):
    top = figure.axes[0]
    return figure._suptitle.get_text(), [t.get_text() for t in top.get_legend().get_texts()], [
        t.get_text() for t in top.texts]


def test_detection_figure_names_event_fap_coverage_and_zooms_on_the_burst(curve, tmp_path):
    result = run_spiacs_analysis(curve, GRB)
    figure = lightcurve_figure(curve, result, event_name="GRB 230307A")
    title, legend, notes = _texts(figure)
    assert title.startswith("GRB 230307A: INTEGRAL SPI-ACS around T0 = 2023-03-07T15:44:06.650Z")
    assert all(ax.get_xlabel() == XLABEL for ax in figure.axes)
    best = [t for t in legend if t.startswith("best excess")][0]
    assert "FAP < 1e-15 (detected)" in best  # the FAP underflows: printed as a bound, never "0"
    assert "background fit interval" in legend and any(t.startswith("search window") for t in legend)
    # the file covers -180.7 .. +359.3 s: the search cannot reach -300 s, and the figure says so
    assert result.excess.coverage == "partial"
    lo_s, hi_s = result.excess.search_window_s
    assert lo_s == pytest.approx(-120.7, abs=0.1) and hi_s == pytest.approx(299.3, abs=0.1)
    assert any(n.startswith(f"partial coverage: searched {lo_s:+.1f} .. {hi_s:+.1f} s of the requested -300 .. +300 s")
               for n in notes)
    lo, hi = figure.axes[1].get_xlim()
    assert lo < result.excess.best_offset_s < hi and hi - lo <= 60.0
    path = tmp_path / "grb.png"
    plot_lightcurve(curve, result, path, event_name="GRB 230307A")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quiet_t0_prints_the_fap_as_a_number(curve):
    t0 = GRB - 90 * u.s
    quiet = curve.between(-180.5, -5.0).relative_to(t0)  # before the burst
    result = run_spiacs_analysis(quiet, t0)
    assert not result.excess.detected
    _, legend, _ = _texts(lightcurve_figure(quiet, result, event_name="quiet T0"))
    best = [t for t in legend if t.startswith("best excess")][0]
    assert f"FAP {result.excess.fap:.2g} (not significant)" in best


def test_burst_in_the_background_is_marked_as_excluded(curve):
    t0 = GRB - 100 * u.s  # the burst at T0+100 s falls in the background beyond a +/-60 s window
    lc = curve.relative_to(t0)
    result = run_spiacs_analysis(lc, t0, None, SpiAcsParams(search=ExcessSearchParams(search_half_window_s=60.0)))
    assert result.excess.background_excluded_s
    _, legend, _ = _texts(lightcurve_figure(lc, result))
    assert "excluded from the background" in legend
    full = curve.relative_to(GRB)
    _, legend_full, _ = _texts(lightcurve_figure(full, run_spiacs_analysis(full, GRB)))
    assert "excluded from the background" not in legend_full
