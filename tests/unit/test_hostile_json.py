"""Hostile JSON alerts: each case is a real bundled alert with one thing made hostile.

Every case was a crash (RecursionError, OverflowError, ValueError, UnicodeEncodeError,
TypeError, astropy's VerifyError, MemoryError) or a wrong result before the decoders
were hardened; now each is a one-line DecodeError naming what and where, or decodes
with the value handled. ``decode_unguarded`` (no catch-all) is run as well, under the
same limits, so that a DecodeError made by ``decode``'s catch-all from a stray
exception cannot pass for a handled case.

The hypothesis tests at the end drive the mutation engine of
``benchmarks/fuzz/fuzz_json.py`` (the long fuzz run) for 200 examples per decoder.
"""

from __future__ import annotations

import base64
import copy
import gzip
import importlib.util
import io
import json
import math
import re
import sys
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from astropy.io import fits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.errors import DecodeError
from broker.event import NONFINITE_NOTE, Event
from broker.limits import DecodeLimits, decode_scope
from broker.sources import decode, decode_unguarded

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
NOTICES = DATA / "gcn" / "gcn-schema" / "gcn" / "notices"
GUANO = NOTICES / "swift" / "bat" / "guano.loc_arc_min.example.json"
GUANO_MAP = NOTICES / "swift" / "bat" / "guano.loc_map.example.json"
MAXI_RECT = NOTICES / "maxi" / "gsc.unknown.rectangle.example.json"
LAT_FLARE = NOTICES / "fermi" / "lat" / "flare.example.json"
AGILE = DATA / "gcn" / "gcn-schema-pr161-classic" / "gcn" / "notices" / "classic" / "agile" / "Ground_alert.example.json"
GBM_SKYMAP = DATA / "gcn" / "skymaps" / "fermi_gbm_skymap.fits.gz"
IGWN_INITIAL = DATA / "igwn" / "userguide" / "MS181101ab-initial.json"
IGWN_EXT = DATA / "igwn" / "userguide" / "MS181101ab-ext-update.json"
IGWN_RETRACTION = DATA / "igwn" / "userguide" / "MS181101ab-retraction.json"
MARK = "@@hostile@@"


def _fuzz_module():
    """benchmarks/fuzz/fuzz_json.py, imported from its path (benchmarks is no package)."""
    name = "_fuzz_json"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "fuzz" / "fuzz_json.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# ---------------------------------------------------------------- building hostile alerts
def _load(path: Path) -> dict:
    return json.loads(path.read_bytes())


def _guano_with_map(blob: bytes | None = None) -> dict:
    """The Guano loc_map example with its placeholder ``healpix_file`` replaced by a real map
    (the Fermi GBM sky map in tests/data, or ``blob``)."""
    obj = _load(GUANO_MAP)
    obj["healpix_file"] = base64.b64encode(GBM_SKYMAP.read_bytes() if blob is None else blob).decode()
    return obj


def _set(obj: dict, path: tuple, token: str) -> bytes:
    """``obj`` (a copy) with the value at ``path`` replaced by the raw JSON text ``token``."""
    obj = copy.deepcopy(obj)
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = MARK
    return json.dumps(obj).replace(json.dumps(MARK), token, 1).encode()


def _value(obj: dict, path: tuple, value) -> bytes:
    """``obj`` (a copy) with the value at ``path`` replaced by a Python value (NaN allowed)."""
    return _set(obj, path, json.dumps(value, allow_nan=True))


def _skymap(obj: dict, path: tuple, fits_bytes: bytes) -> bytes:
    return _set(obj, path, json.dumps(base64.b64encode(fits_bytes).decode()))


def _igwn_fits() -> bytes:
    """The real multi-order sky map embedded in MS181101ab-initial.json."""
    return base64.b64decode(_load(IGWN_INITIAL)["event"]["skymap"])


def _set_card(fits_bytes: bytes, keyword: str, value: str, hdu: int = 1) -> bytes:
    """A copy with header card ``keyword`` of HDU ``hdu`` (0 or 1) set to ``value`` as written."""
    data = bytearray(fits_bytes)
    start = data.find(b"XTENSION=") if hdu else 0
    i = data.find(keyword.ljust(8).encode(), start)
    assert i >= 0 and i % 80 == 0, keyword
    data[i : i + 80] = f"{keyword.ljust(8)}= {value:>20}".encode().ljust(80)
    return bytes(data)


def _set_table_value(fits_bytes: bytes, column: str, row: int, value) -> bytes:
    """A copy with one table value changed (through astropy, so the layout stays valid)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(io.BytesIO(fits_bytes)) as hdul:
            hdul[1].data[column][row] = value
            out = io.BytesIO()
            hdul.writeto(out)
    return out.getvalue()


def _gzip_with_zeros(fits_bytes: bytes, n_zeros: int) -> bytes:
    """``fits_bytes`` and ``n_zeros`` zero bytes after it in one gzip member (a bomb)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [z.compress(fits_bytes)]
    block = bytes(1 << 20)
    for _ in range(n_zeros >> 20):
        parts.append(z.compress(block))
    parts.append(z.flush())
    return b"".join(parts)


def _three_hdus(fits_bytes: bytes, zeroed: bool = False) -> bytes:
    """The map's primary HDU and its table three times (each under a small limit, together
    over); ``zeroed``: the table values set to 0, so that the gzip of it is tiny."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(io.BytesIO(fits_bytes)) as hdul:
            if zeroed:
                for name in hdul[1].columns.names:
                    hdul[1].data[name][:] = 0
            out = io.BytesIO()
            fits.HDUList([hdul[0], hdul[1], hdul[1].copy(), hdul[1].copy()]).writeto(out)
    return out.getvalue()


# ---------------------------------------------------------------- expectations
def _point_at(ra: float, dec: float) -> Callable[[list[Event]], None]:
    def check(events: list[Event]) -> None:
        (ev,) = events
        assert ev.localization.type == "point"
        assert (ev.localization.ra, ev.localization.dec) == (ra, dec)
    return check


def _nulled(name: str, kind: str, *, path: str | None = None) -> Callable[[list[Event]], None]:
    """The property ``name`` (dotted ``path`` into properties) is null, noted as ``kind``."""
    def check(events: list[Event]) -> None:
        (ev,) = events
        value = ev.properties
        for part in (path or name).split("."):
            value = value[part]
        assert value is None
        assert ev.properties[NONFINITE_NOTE][path or name] == kind
        json.dumps(ev.to_json_dict(), allow_nan=False)  # the Event is publishable
    return check


def _same_areas_as(path: Path) -> Callable[[list[Event]], None]:
    expected = decode(path.read_bytes())[0].localization

    def check(events: list[Event]) -> None:
        (ev,) = events
        assert ev.localization == expected
    return check


def _skymap_error(match: str) -> Callable[[list[Event]], None]:
    """A GCN notice whose healpix_file is unusable keeps decoding; the reason is noted."""
    def check(events: list[Event]) -> None:
        (ev,) = events
        assert ev.localization is None
        assert match in ev.properties["skymap_error"], ev.properties["skymap_error"]
    return check


def _notice_id_kept(notice_id: str) -> Callable[[list[Event]], None]:
    def check(events: list[Event]) -> None:
        (ev,) = events
        assert ev.properties["external_coinc"]["gcn_notice_id"] == notice_id
        assert ev.id.endswith(f":ext:{notice_id}")
    return check


@dataclass(frozen=True)
class Case:
    """A real alert made hostile, and what decode must do with it."""

    id: str
    make: Callable[[], bytes]
    expect: str | Callable[[list[Event]], None]  # a regex the DecodeError must match, or a check
    limits: DecodeLimits | None = None


_DEEP = "[" * 10_000 + "]" * 10_000
CASES = [
    # 1. nesting
    Case("gcn-10k-deep", lambda: _set(_load(GUANO), ("classification",), _DEEP),
         r"^JSON nesting depth .* over the limit max_json_depth = 64 \(got 10,001\)$"),
    Case("gcn-depth-65", lambda: _set(_load(GUANO), ("x",), "[" * 64 + "]" * 64),
         r"max_json_depth = 64 \(got 65\)"),
    Case("gcn-depth-64-is-fine", lambda: _set(_load(GUANO), ("x",), "[" * 63 + "]" * 63), _point_at(336.26, 25.139)),
    Case("gcn-deep-in-string-is-text", lambda: _value(_load(GUANO), ("follow_up_event",), "[{" * 5000),
         _point_at(336.26, 25.139)),
    Case("igwn-10k-deep", lambda: _set(_load(IGWN_INITIAL), ("event", "properties"), _DEEP), r"max_json_depth = 64"),
    Case("igwn-items-over-limit", lambda: _value(_load(IGWN_INITIAL), ("urls",), {f"u{i}": "x" for i in range(2000)}),
         r"^JSON array items and object members is over the limit max_json_items = 1,000 \(got 2,0\d\d\)$",
         DecodeLimits(max_json_items=1000)),
    Case("gcn-cpu-budget", lambda: _value(_load(GUANO), ("id",), ["694215995"] * 300_000),
         r"^decode took more than max_decode_cpu_s = 0\.05 s of CPU \(.+\)$",
         DecodeLimits(max_decode_cpu_s=0.05, max_json_items=1_000_000)),
    # 2. huge numbers
    Case("gcn-5000-digit-int", lambda: _set(_load(GUANO), ("ra",), "1" * 5000),
         r"^invalid JSON: an integer at byte \d+ has 5,000 digits, longer than the 4300 digits Python converts$"),
    Case("igwn-5000-digit-int", lambda: _set(_load(IGWN_INITIAL), ("event", "far"), "9" * 5000), r"5,000 digits"),
    Case("gcn-400-digit-ra", lambda: _set(_load(GUANO), ("ra",), "1" * 400),
         r"^GCN notice swift/bat/Guano: integer of 400 digits is too large for a float \(at /ra\)$"),
    Case("gcn-400-digit-far", lambda: _set(_load(GUANO), ("far",), "1" * 400),
         r"integer of 400 digits is too large for a float \(at /far\)$"),
    Case("igwn-400-digit-far", lambda: _set(_load(IGWN_INITIAL), ("event", "far"), "1" * 400),
         r"^igwn MS181101ab: 'event\.far' is an integer of 400 digits, too large for a float$"),
    Case("gcn-1e400-ra", lambda: _set(_load(GUANO), ("ra",), "1e400"),
         r"^GCN notice swift/bat/Guano: ra = inf is not a finite number \(at /ra\)$"),
    Case("igwn-400-digit-time-difference", lambda: _set(_load(IGWN_EXT), ("external_coinc", "time_difference"), "7" * 400),
         r"^igwn MS181101ab: 'external_coinc\.time_difference' is an integer of 400 digits, too large for a float$"),
    Case("igwn-1e400-far-nulled", lambda: _set(_load(IGWN_INITIAL), ("event", "far"), "1e400"),
         _nulled("far_hz", "inf")),
    # 3. times
    Case("gcn-t0-year1-offset", lambda: _value(_load(GUANO), ("trigger_time",), "0001-01-01T00:00:00+01:00"),
         r"^GCN notice swift/bat/Guano trigger_time: invalid date-time '0001-01-01T00:00:00\+01:00': date value out"),
    Case("gcn-t0-9999-7-digit-fraction", lambda: _value(_load(GUANO), ("trigger_time",), "9999-12-31T23:59:59.9999999Z"),
         r"trigger_time: invalid date-time '9999-12-31T23:59:59\.9999999Z'"),
    Case("gcn-t0-offset-99h", lambda: _value(_load(GUANO), ("trigger_time",), "2022-12-31T21:46:05+99:00"),
         r"trigger_time: invalid date-time .*UTC offset \+99:00 out of range"),
    Case("gcn-t0-1899", lambda: _value(_load(GUANO), ("trigger_time",), "1899-12-31T23:59:59Z"),
         r"^GCN notice swift/bat/Guano trigger_time = 1899-12-31T23:59:59\.000Z is outside 1900-01-01 \.\. 2200-01-01$"),
    Case("gcn-observation-start-2200", lambda: _value(_load(LAT_FLARE), ("observation_start",), "2200-01-01T00:00:00"),
         r"^GCN notice fermi/lat/flare observation_start = 2200-01-01T00:00:00\.000Z is outside 1900-01-01"),
    Case("gcn-alert-datetime-overflow", lambda: _value(_load(GUANO), ("alert_datetime",), "9999-12-31T23:59:59-01:00"),
         r"alert_datetime: invalid date-time"),
    Case("igwn-event-time-year1-offset", lambda: _value(_load(IGWN_INITIAL), ("event", "time"), "0001-01-01T00:00:00+01:00"),
         r"^igwn MS181101ab: 'event\.time' is out of range once converted to UTC: '0001-01-01T00:00:00\+01:00'$"),
    Case("igwn-time-created-9999-offset", lambda: _value(_load(IGWN_INITIAL), ("time_created",), "9999-12-31T23:59:59-01:00"),
         r"'time_created' is out of range once converted to UTC"),
    Case("igwn-event-time-2300", lambda: _value(_load(IGWN_INITIAL), ("event", "time"), "2300-01-01T00:00:00Z"),
         r"^igwn MS181101ab: 'event\.time' = 2300-01-01T00:00:00\.000Z is outside 1900-01-01 \.\. 2200-01-01$"),
    Case("igwn-retraction-created-1800", lambda: _value(_load(IGWN_RETRACTION), ("time_created",), "1800-01-01T00:00:00Z"),
         r"'time_created' = 1800-01-01T00:00:00\.000Z is outside"),
    # 4. types and text
    Case("gcn-lone-surrogate-id", lambda: _set(_load(GUANO), ("id",), '["\\ud800"]'),
         r"^invalid value: id: id is not valid Unicode \(lone surrogate at index \d+\); upstream_id"),
    Case("gcn-lone-surrogate-in-bytes", lambda: _value(_load(GUANO), ("id",), ["x"]).replace(b'"x"', b'"\xed\xa0\x80"'),
         r"^invalid value: id: id is not valid Unicode \(lone surrogate at index \d+\)"),
    Case("gcn-utf-16-deep-nesting",  # the pre-scan reads UTF-8 only (a UTF-16 \" would fool it)
         lambda: _set(_load(GUANO), ("x",), _DEEP).decode().encode("utf-16-le"),
         r"^invalid JSON: utf-16-le, not UTF-8 \(RFC 8259 section 8\.1\)$"),
    Case("gcn-not-utf-8", lambda: _value(_load(GUANO), ("id",), ["x"]).replace(b'"x"', b'"\xff"'),
         r"^invalid JSON: not utf-8 \(invalid start byte at byte \d+\)$"),
    Case("igwn-lone-surrogate-superevent", lambda: _set(_load(IGWN_INITIAL), ("superevent_id",), '"S\\udfff"'),
         r"^igwn gwalert: 'superevent_id' is not valid Unicode \(lone surrogate at index 1\)$"),
    Case("gcn-mission-not-a-string", lambda: _value(_load(AGILE), ("mission",), [1, 2]),
         r"^GCN notice classic/agile/alert: 'mission' must be a string, got list \(at /mission\)$"),
    Case("gcn-mission-int-schema", lambda: _value(_load(GUANO), ("mission",), 5),
         r"schema violation at /mission: 5 is not of type 'string'"),
    Case("igwn-gcn-notice-id-superscript", lambda: _value(_load(IGWN_EXT), ("external_coinc", "gcn_notice_id"), "²"),
         _notice_id_kept("²")),  # "²".isdigit() is True, int("²") a ValueError
    # 5. coordinates and errors (GCN), checked before any computation
    Case("gcn-dec-200", lambda: _value(_load(GUANO), ("dec",), 200),
         r"^GCN notice swift/bat/Guano: dec = 200 is outside \[-90, 90\] \(at /dec\)$"),
    Case("gcn-ra-1000", lambda: _value(_load(GUANO), ("ra",), 1000), r"ra = 1000 is outside \[0, 360\] \(at /ra\)$"),
    Case("gcn-ra-minus-1000", lambda: _value(_load(AGILE), ("ra",), -1000), r"ra = -1000 is outside \[0, 360\] \(at /ra\)$"),
    Case("gcn-ra-nan", lambda: _value(_load(GUANO), ("ra",), math.nan), r"ra = nan is not a finite number \(at /ra\)$"),
    Case("gcn-ra-360-is-0", lambda: _value(_load(GUANO), ("ra",), 360), _point_at(0.0, 25.139)),
    Case("gcn-maxi-corner-dec-200", lambda: _value(_load(MAXI_RECT), ("rectangular_error_corners", 2, 1), 200),
         r"^GCN notice maxi/gsc\.unknown: dec = 200 is outside \[-90, 90\] \(at /rectangular_error_corners/2/1\)$"),
    Case("gcn-maxi-dec-200-before-sep", lambda: _value(_load(MAXI_RECT), ("dec",), 200.0),
         r"dec = 200\.0 is outside \[-90, 90\] \(at /dec\)$"),
    Case("gcn-maxi-corner-not-numbers", lambda: _value(_load(MAXI_RECT), ("rectangular_error_corners", 0), ["a", 1]),
         r"schema violation at /rectangular_error_corners/0/0"),
    Case("gcn-agile-error-radius-500", lambda: _value(_load(AGILE), ("ra_dec_error",), 500),
         r"^GCN notice classic/agile/alert: error radius 500 deg is outside \[0, 180\] \(at /ra_dec_error\)$"),
    Case("gcn-agile-containment-250", lambda: _value(_load(AGILE), ("containment_probability",), 250),
         r"containment_probability = 250 is outside \[0, 1\] \(or \[0, 100\] %\) \(at /containment_probability\)$"),
    # 6. NaN / Infinity values
    Case("gcn-maxi-flux-nan-nulled", lambda: _value(_load(MAXI_RECT), ("flux",), math.nan), _nulled("flux", "nan")),
    Case("gcn-lat-flux-infinity-nulled", lambda: _set(_load(LAT_FLARE), ("flux",), "Infinity"), _nulled("flux", "inf")),
    Case("igwn-far-nan-nulled", lambda: _value(_load(IGWN_INITIAL), ("event", "far"), math.nan), _nulled("far_hz", "nan")),
    Case("igwn-classification-infinity-nulled",
         lambda: _set(_load(IGWN_INITIAL), ("event", "classification", "BNS"), "-Infinity"),
         _nulled("classification", "-inf", path="classification.BNS")),
    # 7. sky maps: decompression bombs, declared sizes, broken FITS
    Case("igwn-skymap-gzip-bomb-trailing-zeros",
         lambda: _skymap(_load(IGWN_INITIAL), ("event", "skymap"), _gzip_with_zeros(_igwn_fits(), 300 << 20)),
         _same_areas_as(IGWN_INITIAL)),
    Case("igwn-skymap-declares-2.5-GB",
         lambda: _skymap(_load(IGWN_INITIAL), ("event", "skymap"),
                         gzip.compress(_set_card(_igwn_fits(), "NAXIS2", str(2_500_000_000 // 40)))),
         r"^igwn MS181101ab: event\.skymap: sky map HDU 1 declared data size in bytes is over the limit "
         r"max_skymap_bytes = 268,435,456 \(got 2,500,000,000\)$"),
    Case("igwn-skymap-gunzip-over-limit",
         lambda: _skymap(_load(IGWN_INITIAL), ("event", "skymap"), gzip.compress(_three_hdus(_igwn_fits(), zeroed=True))),
         r"event\.skymap: sky map size after gunzip in bytes is over the limit max_skymap_bytes = 1,000,000$",
         DecodeLimits(max_skymap_bytes=1_000_000)),
    Case("igwn-skymap-base64-over-limit", lambda: IGWN_INITIAL.read_bytes(),  # the real alert, a small limit
         r"event\.skymap decoded size in bytes is over the limit max_skymap_bytes = 100,000 \(got 7\d\d,\d\d\d\)$",
         DecodeLimits(max_skymap_bytes=100_000)),
    Case("igwn-skymap-truncated-data",
         lambda: _skymap(_load(IGWN_INITIAL), ("event", "skymap"), _igwn_fits()[:100_000]),
         r"sky map: unreadable HEALPix table \(HDU 1 declares 768,000 bytes of data, 91,360 present: truncated file\)$"),
    Case("igwn-skymap-verify-error",
         lambda: _skymap(_load(IGWN_INITIAL), ("event", "skymap"), _set_card(_igwn_fits(), "TFORM2", "'QQQ'")),
         r"^igwn MS181101ab: event\.skymap: sky map: unreadable FITS \(VerifyError: .*QQQ"),
    Case("igwn-skymap-naxis2-not-int",
         lambda: _skymap(_load(IGWN_INITIAL), ("event", "skymap"), _set_card(_igwn_fits(), "NAXIS2", "'x'")),
         r"sky map: unreadable FITS \(HDU 1: NAXIS2 = b\"'x'\" is not an integer\)$"),
    Case("igwn-skymap-tfields-huge",  # astropy allocated per declared field: MemoryError / OOM kill
         lambda: _skymap(_load(IGWN_INITIAL), ("event", "skymap"),
                         _set_card(_igwn_fits(), "TFIELDS", "99999999999999999999")),
         r"sky map: unreadable FITS \(HDU 1: TFIELDS = 99999999999999999999, not in 0 \.\. 999\)$"),
    Case("igwn-skymap-variable-length-array",  # astropy reads those row by row in Python
         lambda: _skymap(_load(IGWN_INITIAL), ("event", "skymap"), _set_card(_igwn_fits(), "TFORM2", "'PK()'")),
         r"sky map: HDU 1 TFORM2 = 'PK\(\)' is a variable-length array column, not supported$"),
    Case("igwn-skymap-uniq-order-30",
         lambda: _skymap(_load(IGWN_INITIAL), ("event", "skymap"), _set_table_value(_igwn_fits(), "UNIQ", 0, 2**62)),
         r"sky map: invalid NUNIQ index 4611686018427387904 \(must be in 4 \.\. 16 \* 4\*\*29 - 1\)$"),
    Case("igwn-skymap-probdensity-1e308",
         lambda: _skymap(_load(IGWN_INITIAL), ("event", "skymap"), _set_table_value(_igwn_fits(), "PROBDENSITY",
                                                                                   slice(None), 1e308)),
         r"sky map: total probability is inf \(densities too large to sum\)$"),
    Case("igwn-combined-skymap-not-base64",
         lambda: _value(_load(IGWN_EXT), ("external_coinc", "combined_skymap"), "@@@="),
         r"external_coinc\.combined_skymap is not valid base64"),
    Case("gcn-healpix-real-map", lambda: json.dumps(_guano_with_map()).encode(),
         lambda events: events[0].localization.type == "healpix" or pytest.fail("no sky map")),
    Case("gcn-healpix-declares-2.5-GB",
         lambda: json.dumps(_guano_with_map(gzip.compress(_set_card(
             gzip.decompress(GBM_SKYMAP.read_bytes()), "NAXIS2", str(2_500_000_000 // 8))))).encode(),
         _skymap_error("max_skymap_bytes = 268,435,456 (got 2,500,000,000)")),
    Case("gcn-healpix-nside-not-power-of-2",
         lambda: json.dumps(_guano_with_map(_set_card(gzip.decompress(GBM_SKYMAP.read_bytes()), "NAXIS2", "700")
                                            [: -8 * 68])).encode(),
         _skymap_error("not 12 * nside**2")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_json_alert(case: Case):
    data = case.make()
    # decode_unguarded has no catch-all: only DecodeError may come out of the decoders
    with decode_scope(case.limits):
        try:
            unguarded = decode_unguarded(data)
        except DecodeError as exc:
            unguarded = exc
    if isinstance(case.expect, str):
        with pytest.raises(DecodeError, match=case.expect) as info:
            decode(data, limits=case.limits)
        reason = str(info.value)
        assert "\n" not in reason and len(reason) < 500
        reason.encode("utf-8")  # goes into a Kafka header
        assert isinstance(unguarded, DecodeError) and re.search(case.expect, str(unguarded))
        assert "decoder failed" not in reason
    else:
        events = decode(data, limits=case.limits)
        assert not isinstance(unguarded, DecodeError), unguarded
        case.expect(events)


def test_gcn_sky_map_over_the_cpu_budget_ends_the_decode(monkeypatch):
    """An unusable healpix_file is noted and the point position used, but not when the
    map used up the CPU budget: then the whole decode stops, naming the limit."""
    import broker.skymap
    from broker.limits import check_cpu

    def slow_summary(raw, skymap_url=None):
        t_end = time.thread_time() + 0.1
        while time.thread_time() < t_end:
            pass
        check_cpu("sky map")

    monkeypatch.setattr(broker.skymap, "summarize_multiorder", slow_summary)
    data = json.dumps(_guano_with_map()).encode()
    reason = r"^decode took more than max_decode_cpu_s = 0\.05 s of CPU \(GCN notice swift/bat/Guano healpix_file\)$"
    with pytest.raises(DecodeError, match=reason):
        decode(data, limits=DecodeLimits(max_decode_cpu_s=0.05))


@pytest.mark.parametrize("few_strings", [0, 20_000], ids=["full-scan", "between-strings"])
def test_json_depth_prescan_ignores_brackets_in_strings_and_escapes(few_strings, monkeypatch):
    import broker.sources
    from broker.sources import _json_shape

    monkeypatch.setattr(broker.sources, "_FEW_STRINGS", few_strings)
    obj = _load(GUANO)
    obj["follow_up_event"] = 'x\\"[[[{{{' * 100 + '\\'  # escaped quotes and a trailing backslash
    data = json.dumps(obj).encode()
    assert _json_shape(data)[0] == 2  # the top object and its arrays
    assert _json_shape(b'{"a": "\\\\", "b": [[["\\\\\\"]"]]]}')[0] == 4
    assert _json_shape(b'[[1, 2], {"a": {"b": []}}]') == (4, 7)  # 6 items; an upper bound


def test_json_depth_prescan_is_cheap_on_the_largest_real_alert():
    """The pre-scan of the 2 MB IGWN alert with two sky maps costs about as much as json.loads."""
    from broker.sources import _json_shape

    data = IGWN_EXT.read_bytes()
    best_scan = best_loads = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        _json_shape(data)
        t1 = time.perf_counter()
        json.loads(data)
        t2 = time.perf_counter()
        best_scan, best_loads = min(best_scan, t1 - t0), min(best_loads, t2 - t1)
    assert best_scan < 3 * best_loads + 0.002, (best_scan, best_loads)


# ---------------------------------------------------------------- hypothesis fuzz
FUZZ_SETTINGS = settings(max_examples=200, deadline=None, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _fuzz_one(decoder: str, rng, index: int) -> None:
    fuzz = _fuzz_module()
    bases = fuzz.bases(decoder)
    data, what = fuzz.mutate(rng, bases[index % len(bases)])
    t0 = time.perf_counter()
    try:
        with decode_scope():
            decode_unguarded(data)
    except DecodeError as exc:
        assert "\n" not in str(exc), what
        str(exc).encode("utf-8")
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"{elapsed:.2f} s for {what}"


@FUZZ_SETTINGS
@given(rng=st.randoms(use_true_random=False), index=st.integers(0, 10_000))
def test_fuzz_gcn_json_only_decode_errors(rng, index):
    _fuzz_one("gcn-json", rng, index)


@FUZZ_SETTINGS
@given(rng=st.randoms(use_true_random=False), index=st.integers(0, 10_000))
def test_fuzz_igwn_json_only_decode_errors(rng, index):
    _fuzz_one("igwn-json", rng, index)
