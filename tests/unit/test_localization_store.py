"""extract_localization on every real alert form, hostile maps, and the store's pure parts
(content ids, point regions, tile ranges). The database side is
tests/integration/test_localization_db.py."""

from __future__ import annotations

import base64
import gzip
import io
import json
import math

import numpy as np
import pytest
from astropy.io import fits

from broker.enrich.coinc import PointSource, radius_at_level
from broker.enrich.localization import PointRegion, check_ordering, extract_localization, read_checked
from broker.enrich.store import _point_areas, _ranges, _uniq_of_ranges, content_id, point_tiles
from broker.errors import DecodeError
from broker.skymap import MultiOrderSkyMap, read_skymap
from broker.sources import decode
from tests.conftest import DATA

USERGUIDE = DATA / "igwn" / "userguide"
GCN = DATA / "gcn" / "gwcelery-kafka"
SKYMAPS = DATA / "gcn" / "skymaps"
MS220722V = DATA / "igwn" / "gwcelery" / "MS220722v_bayestar.multiorder.fits"
GUANO = DATA / "gcn" / "gcn-schema" / "gcn" / "notices" / "swift" / "bat" / "guano.loc_map.example.json"


def _one(path):
    raw = path.read_bytes()
    return decode(raw)[0], raw


# ------------------------------------------------------------------ real alerts
@pytest.mark.parametrize("name", ["MS181101ab-earlywarning.json", "MS181101ab-preliminary.json",
                                  "MS181101ab-initial.json", "MS181101ab-update.json", "MS181101ab-ext-update.json",
                                  "MS181101ab-preliminary.avro"])
def test_igwn_json_and_avro_give_the_embedded_map(name):
    ev, raw = _one(USERGUIDE / name)
    sky = extract_localization(ev, raw)
    assert isinstance(sky, MultiOrderSkyMap) and sky.meta["ORDERING"] == "NUNIQ"
    assert np.array_equal(sky.uniq, read_skymap((USERGUIDE / "bayestar.multiorder.fits").read_bytes()).uniq)


def test_avro_and_json_forms_are_one_localization():
    a = extract_localization(*_one(USERGUIDE / "MS181101ab-preliminary.avro"))
    j = extract_localization(*_one(USERGUIDE / "MS181101ab-preliminary.json"))
    assert content_id(a) == content_id(j)
    other = extract_localization(*_one(DATA / "igwn" / "fink-mm" / "MS230518e-initial.json"))
    assert content_id(other) != content_id(j)


@pytest.mark.parametrize("name", ["MS181101ab-retraction.json", "MS181101ab-retraction.avro",
                                  "MS181101ab-2-Preliminary.xml", "MS181101ab-5-Retraction.xml"])
def test_retractions_and_voevents_have_no_localization(name):
    assert extract_localization(*_one(USERGUIDE / name)) is None


@pytest.mark.parametrize("name, radius, containment", [
    ("kafka_alert_fermi_flight.json", 7.15, 0.68), ("kafka_alert_fermi_ground.json", 1.08, 0.68),
    ("kafka_alert_fermi_final.json", 1.0, 0.68), ("kafka_alert_swift_targeted.json", 0.03, 0.9)])
def test_gcn_points_keep_their_error_circle(name, radius, containment):
    ev, raw = _one(GCN / name)
    p = extract_localization(ev, raw)
    assert isinstance(p, PointRegion) and isinstance(p, PointSource)
    assert (p.ra_deg, p.dec_deg) == (ev.localization.ra, ev.localization.dec)
    assert (p.error_radius_deg, p.containment) == (radius, containment)


def test_gcn_alert_without_position_has_none():
    assert extract_localization(*_one(GCN / "kafka_alert_fermi_alert.json")) is None


def _guano_with(fits_bytes: bytes):
    obj = json.loads(GUANO.read_bytes())
    obj["healpix_file"] = base64.b64encode(fits_bytes).decode()
    raw = json.dumps(obj).encode()
    return decode(raw)[0], raw


def test_gcn_healpix_file_multiorder_and_flat():
    swift = (SKYMAPS / "swift_skymap.multiorder.fits").read_bytes()
    sky = extract_localization(*_guano_with(swift))
    assert isinstance(sky, MultiOrderSkyMap) and np.array_equal(sky.uniq, read_skymap(swift).uniq)
    gbm = gzip.decompress((SKYMAPS / "fermi_gbm_skymap.fits.gz").read_bytes())
    ev, raw = _guano_with(gbm)
    merged = extract_localization(ev, raw)
    flat = extract_localization(ev, raw, merge_flat=False)
    assert flat.uniq.size == 768 and flat.meta["ORDERING"] == "RING"
    # merged as read_sky_map(moc=True) merges (this NSIDE-8 map has no equal siblings)
    from ligo.skymap.io import read_sky_map

    moc = read_sky_map(io.BytesIO(gbm), moc=True)
    assert np.array_equal(np.sort(merged.uniq), np.sort(np.asarray(moc["UNIQ"])))


# ------------------------------------------------------------------ hostile maps
def _fits_with(data: dict, header: dict) -> bytes:
    hdu = fits.BinTableHDU.from_columns([fits.Column(k, "D" if v.dtype.kind == "f" else "K", array=v)
                                         for k, v in data.items()])
    hdu.header.update(header)
    out = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(out)
    return out.getvalue()


def _ms220722v_with(change) -> bytes:
    sky = read_skymap(MS220722V.read_bytes())
    dens = change(sky.probdensity.copy())
    return _fits_with({"UNIQ": sky.uniq, "PROBDENSITY": dens}, {"PIXTYPE": "HEALPIX", "ORDERING": "NUNIQ"})


@pytest.mark.parametrize("blob, match", [
    (b"this is not FITS at all", "sky map"),
    (_ms220722v_with(lambda d: np.where(np.arange(d.size) == 7, -d, d)), "negative, NaN"),
    (_ms220722v_with(lambda d: np.where(np.arange(d.size) == 7, np.nan, d)), "negative, NaN"),
    (_ms220722v_with(lambda d: d * 0.0), "total probability is 0"),
])
def test_bad_maps_are_one_line_decode_errors_naming_event_and_field(blob, match):
    ev, raw = _guano_with(blob)
    with pytest.raises(DecodeError, match=match) as info:
        extract_localization(ev, raw)
    msg = str(info.value)
    assert msg.startswith(ev.id + ": healpix_file: ") and "\n" not in msg


def test_bad_base64_and_bad_igwn_map():
    obj = json.loads((USERGUIDE / "MS181101ab-initial.json").read_bytes())
    ev = decode(json.dumps(obj).encode())[0]
    obj["event"]["skymap"] = "not base64!"
    with pytest.raises(DecodeError, match=r"event\.skymap is not valid base64"):
        extract_localization(ev, json.dumps(obj).encode())
    obj["event"]["skymap"] = base64.b64encode(b"SIMPLE  = T" + b" " * 100).decode()
    with pytest.raises(DecodeError, match=r"event\.skymap: sky map"):
        extract_localization(ev, json.dumps(obj).encode())


def _flat(order: int, relabel: bool) -> bytes:
    """MS220722v rasterized (ligo.skymap) to a flat NESTED map, labelled right or as RING."""
    from ligo.skymap.bayestar import rasterize
    from ligo.skymap.io import read_sky_map

    prob = np.asarray(rasterize(read_sky_map(str(MS220722V), moc=True)[["UNIQ", "PROBDENSITY"]], order=order)["PROB"])
    return _fits_with({"PROB": prob}, {"PIXTYPE": "HEALPIX", "ORDERING": "RING" if relabel else "NESTED",
                                       "NSIDE": 1 << order, "INDXSCHM": "IMPLICIT", "COORDSYS": "C"})


@pytest.mark.parametrize("order", [6, 8])
def test_ring_nested_mislabelled_is_refused(order):
    assert read_checked(_flat(order, relabel=False)).uniq.size < 12 << (2 * order)  # merged
    with pytest.raises(DecodeError, match="ORDERING='RING' looks wrong"):
        read_checked(_flat(order, relabel=True))
    ev, raw = _guano_with(_flat(order, relabel=True))
    with pytest.raises(DecodeError, match=r"healpix_file: sky map: ORDERING='RING' looks wrong"):
        extract_localization(ev, raw)


def test_real_gbm_flat_map_passes_and_fails_relabelled():
    raw = gzip.decompress((SKYMAPS / "fermi_gbm_skymap.fits.gz").read_bytes())
    check_ordering(read_skymap(raw))  # RING, as labelled
    with fits.open(io.BytesIO(raw)) as hdul:
        hdul[1].header["ORDERING"] = "NESTED"
        out = io.BytesIO()
        hdul.writeto(out)
    with pytest.raises(DecodeError, match="ORDERING='NESTED' looks wrong"):
        check_ordering(read_skymap(out.getvalue()))


# ------------------------------------------------------------------ store's pure parts
def test_tile_ranges_round_trip_on_a_real_map():
    sky = read_skymap((SKYMAPS / "swift_skymap.multiorder.fits").read_bytes())
    lo, hi, level = _ranges(sky.uniq)
    assert np.all(hi - lo == np.left_shift(1, 2 * (29 - level)))
    assert np.array_equal(_uniq_of_ranges(lo, hi), sky.uniq)


def test_content_id_is_order_independent_and_sees_every_value():
    sky = read_skymap(MS220722V.read_bytes())
    perm = np.random.default_rng(1).permutation(sky.uniq.size)
    shuffled = MultiOrderSkyMap(sky.uniq[perm], sky.probdensity[perm], {k: v[perm] for k, v in sky.distance.items()},
                                {"OBJECT": "other header"})
    assert content_id(shuffled) == content_id(sky)
    d = sky.distance["DISTMU"].copy()
    d[0] = np.nextafter(d[0], np.inf)
    assert content_id(MultiOrderSkyMap(sky.uniq, sky.probdensity, {**sky.distance, "DISTMU": d})) != content_id(sky)
    assert content_id(PointRegion(1.0, 2.0, 3.0, 0.68)) != content_id(PointRegion(1.0, 2.0, 3.0, 0.9))


@pytest.mark.parametrize("name", ["kafka_alert_fermi_flight.json", "kafka_alert_fermi_ground.json",
                                  "kafka_alert_swift_targeted.json", "kafka_alert_icecube_gold.json"])
def test_point_tiles_are_the_rayleigh_disc(name):
    """The level-p region of a real error circle (tiles with cum_prob <= p) is the disc of
    radius_at_level(p), to a pixel; densities integrate to the covered containment."""
    import astropy.units as u
    from astropy.coordinates import angular_separation
    from astropy_healpix import uniq_to_level_ipix
    from astropy_healpix.core import healpix_to_lonlat

    p = extract_localization(*_one(GCN / name))
    uniq, dens, cum = point_tiles(p.ra_deg, p.dec_deg, p.error_radius_deg, p.containment)
    level, ipix = uniq_to_level_ipix(uniq)
    assert 100 < uniq.size < 2000 and np.all(level == level[0])
    lon, lat = healpix_to_lonlat(ipix, 1 << int(level[0]), order="nested")
    sep = angular_separation(lon, lat, p.ra_deg * u.deg, p.dec_deg * u.deg).to_value(u.deg)
    pixel = math.degrees(math.sqrt(math.pi / 3)) / (1 << int(level[0]))
    for lvl in (0.5, 0.9):
        r = radius_at_level(p.error_radius_deg, p.containment, lvl)
        inside = cum <= lvl
        assert sep[inside].max() <= r and sep[~inside].min() > r
        assert sep[inside].max() > r - 2 * pixel
    area = (math.pi / 3) * np.ldexp(1.0, -2 * level)
    assert float(np.sum(dens * area)) == pytest.approx(0.999, abs=0.01)
    a50, a90 = _point_areas(p.error_radius_deg, p.containment)
    r90 = math.radians(radius_at_level(p.error_radius_deg, p.containment, 0.9))
    assert a90 == pytest.approx(2 * math.pi * (1 - math.cos(r90)) * (180 / math.pi) ** 2, rel=1e-12) and a50 < a90


def test_retraction_and_unread_raw_embed_no_map():
    """The enrich stage reads raw bytes only for alerts that may embed a map and passes
    b"" otherwise: an Avro-form LVK retraction must not be parsed as an Avro container
    (found on the quickstart: 'unreadable Avro container' for MS181101ab's retraction)."""
    from broker.enrich.localization import embedded_skymap_bytes, extract_localization
    from broker.sources import decode

    for name in ("MS181101ab-retraction.avro", "MS181101ab-retraction.json"):
        raw = (DATA / "igwn" / "userguide" / name).read_bytes()
        event = decode(raw)[0]
        assert event.is_retraction
        assert embedded_skymap_bytes(event, raw) == (None, "")
        assert extract_localization(event, b"") is None
        assert extract_localization(event, raw) is None
    preliminary = (DATA / "igwn" / "userguide" / "MS181101ab-preliminary.avro").read_bytes()
    assert extract_localization(decode(preliminary)[0], preliminary) is not None
