"""Regression tests for what a red-team pass found after the hardening (each made from
a real bundled alert): a quadratic date-time regex, ids too long for a PostgreSQL
index in UTF-8, a database error taken for an outage, control characters reaching the
terminal, an invalid topic name ending a whole replay, overlapping or empty sky maps,
a password fragment shown as a host name, and limits that ``inspect`` ignored."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from astropy.io import fits

from tests.conftest import ROOT as REPO_ROOT
from broker.errors import BrokerError, DecodeError
from broker.sources import decode, decode_unguarded

DATA = REPO_ROOT / "tests" / "data"
GUANO = DATA / "gcn" / "gcn-schema" / "gcn" / "notices" / "swift" / "bat" / "Guano.example.json"
GUANO_ARC = DATA / "gcn" / "gcn-schema" / "gcn" / "notices" / "swift" / "bat" / "guano.loc_arc_min.example.json"
GBM_VOEVENT = DATA / "voevent" / "pygcn" / "gbm_flt_pos.xml"
IGWN_INITIAL = DATA / "igwn" / "userguide" / "MS181101ab-initial.json"
GBM_IVORN = b"ivo://nasa.gsfc.gcn/Fermi#GBM_Flt_Pos_2011-09-04T03:54:36.02_336801278_45-956"


def _gcn(path=GUANO, **changes) -> bytes:
    obj = json.loads(path.read_text())
    obj.update(changes)
    return json.dumps(obj).encode()


def _cpu(fn):
    t = time.process_time()
    try:
        fn()
    except DecodeError as exc:
        return time.process_time() - t, exc
    return time.process_time() - t, None


# ---------------------------------------------------------------- 1. quadratic date-time regex
@pytest.mark.parametrize("make", [
    lambda n: _gcn(trigger_time="2022-12-31T21:46:05" + " " * n + "x"),
    lambda n: _gcn(alert_datetime="2022-12-31T21:46:05" + " " * n + "x"),
    lambda n: GBM_VOEVENT.read_bytes().replace(b"<ISOTime>2011-09-04T03:54:36.02",
                                               b"<ISOTime>2011-09-04T03:54:36" + b" " * n + b"x", 1),
], ids=["gcn-trigger_time", "gcn-alert_datetime", "voevent-ISOTime"])
def test_date_time_with_a_million_spaces_is_refused_at_once(make):
    """100 kB of spaces took 21 s (O(n²) backtracking); 1 MB would have taken ~35 min."""
    _cpu(lambda: decode(make(10)))  # warm the schema caches
    cpu, exc = _cpu(lambda: decode_unguarded(make(1_000_000)))
    assert exc is not None and "not an ISO 8601 date-time" in str(exc)
    assert cpu < 1.0, f"{cpu:.2f} s of CPU: the time parser is not linear"


def test_date_times_with_spaces_and_zones_still_parse():
    for text in ("2022-12-31T21:46:05Z", " 2022-12-31T21:46:05.5 ", "2022-12-31 21:46:05 +00:00",
                 "2022-1-3T21:46:05.123456789Z"):
        (ev,) = decode(_gcn(trigger_time=text))
        assert ev.time.startswith(("2022-12-31T21:46:05", "2022-01-03T21:46:05.123")), (text, ev.time)


# ---------------------------------------------------------------- 2. ids too long for an index
def test_ivorn_of_1000_four_byte_characters_is_a_decode_error():
    """990 supplementary-plane characters: under 1,024 characters, ~4 kB of UTF-8, over
    PostgreSQL's 2,704-byte btree entry. It used to pass, and the archive write then
    failed on every retry."""
    rng = np.random.default_rng(1)
    bad = "".join(chr(int(c)) for c in rng.integers(0x20000, 0x2A6DF, 990)).encode()
    data = GBM_VOEVENT.read_bytes().replace(GBM_IVORN, b"ivo://nasa.gsfc.gcn/Fermi#" + bad)
    with pytest.raises(DecodeError, match="bytes long in UTF-8, over 1024"):
        decode_unguarded(data)


def test_index_row_too_large_is_not_an_outage():
    """PostgreSQL reports it as an OperationalError (SQLSTATE 54000): it must be bisected
    to its message and dead-lettered, not waited out forever."""
    import psycopg
    import sqlalchemy.exc as sa_exc

    from broker.archive.retry import is_transient
    from broker.archive.retry import is_infrastructure_error

    err = psycopg.errors.ProgramLimitExceeded("index row size 4008 exceeds btree version 4 maximum 2704")
    assert isinstance(err, psycopg.OperationalError)
    assert not is_infrastructure_error(err)
    assert not is_transient(sa_exc.OperationalError("INSERT", {}, err))
    gone = psycopg.OperationalError("connection refused")  # no SQLSTATE: the server is away
    assert is_infrastructure_error(gone) and is_transient(sa_exc.OperationalError("x", {}, gone))
    assert is_infrastructure_error(psycopg.errors.DiskFull("could not extend file"))


# ---------------------------------------------------------------- 3. control characters
@pytest.mark.parametrize("value", ["694215995\x1b[2J\x1b]0;pwned\x07", "6942\n15995", "6942\x9b15995"])
def test_control_characters_in_an_id_are_refused(value):
    with pytest.raises(DecodeError, match="control character"):
        decode_unguarded(_gcn(id=[value]))


def test_inspect_never_prints_a_terminal_escape(tmp_path):
    bad = tmp_path / "esc\x1b[31m.json"
    bad.write_bytes(_gcn(id=["694215995\x1b[2J"]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMA_BROKER_")}
    proc = subprocess.run([sys.executable, "-m", "broker", "inspect", str(bad), str(GUANO)], capture_output=True,
                          env=env, cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 1
    assert b"\x1b" not in proc.stdout + proc.stderr
    assert b"esc\\x1b[31m.json" in proc.stderr and b"control character" in proc.stderr
    assert len(proc.stdout.splitlines()) == 1  # the good file still decoded


# ---------------------------------------------------------------- 4. replay with a hostile topic name
def test_a_file_whose_topic_is_invalid_does_not_stop_the_replay(tmp_path):
    from broker.replay import replay_files
    from tests.unit.test_replay import RecordingProducer

    obj = json.loads(GUANO.read_text())
    obj["$schema"] = "https://gcn.nasa.gov/schema/main/gcn/notices/evil topic name!/x.schema.json"
    bad = tmp_path / "bad_topic.json"
    bad.write_text(json.dumps(obj))
    created = []
    producer = RecordingProducer()
    result = replay_files([bad, GUANO], producer, create_topics=created.append)
    assert result.sent == 1 and [m[1] for m in producer.messages] == [GUANO.read_bytes()]
    (path, reason), = result.errors
    assert path == bad and "not a valid Kafka topic name" in reason
    assert created == [{"gcn.notices.swift.bat.guano"}]


# ---------------------------------------------------------------- 5. sky maps that cannot be summarized
def _fits_b64(uniq, dens) -> str:
    t = fits.BinTableHDU.from_columns([fits.Column("UNIQ", "K", array=np.asarray(uniq, np.int64)),
                                       fits.Column("PROBDENSITY", "D", array=np.asarray(dens, float))])
    t.header["PIXTYPE"], t.header["ORDERING"] = "HEALPIX", "NUNIQ"
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), t]).writeto(buf)
    return base64.b64encode(buf.getvalue()).decode()


def test_overlapping_sky_map_keeps_the_notice_point_position():
    """100 copies of one NUNIQ pixel: 'area_90 = 68,755 deg²' used to dead-letter the whole notice."""
    data = _gcn(GUANO_ARC, healpix_file=_fits_b64([4] * 100, [0.9 / (np.pi / 3) / 20] * 100))
    (ev,) = decode_unguarded(data)
    assert ev.localization.type == "point"
    assert ev.localization.ra == json.loads(GUANO_ARC.read_text())["ra"]
    assert "more than the whole sky" in ev.properties["skymap_error"]


def test_sky_map_of_zero_probability_is_refused():
    """All PROBDENSITY zero: a full-sky area with a meaningless 'max' that was indexed."""
    from broker.skymap import summarize_multiorder

    raw = base64.b64decode(_fits_b64(np.arange(4 * 4**3, 16 * 4**3), np.zeros(12 * 4**3)))
    with pytest.raises(DecodeError, match="total probability is 0"):
        summarize_multiorder(raw)


# ---------------------------------------------------------------- 6. settings
def test_unescaped_at_in_a_password_is_refused_without_showing_it():
    from broker.config import load_settings

    with pytest.raises(BrokerError) as info:
        load_settings(archive={"database_url": "postgresql+psycopg://bob:Sup3r@S3cret@127.0.0.1:1/mma"})
    assert "%40" in str(info.value) and "S3cret" not in str(info.value) and "Sup3r" not in str(info.value)


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0"])
def test_cpu_limit_cannot_be_switched_off(value):
    from broker.limits import DecodeLimits

    with pytest.raises(ValueError):
        DecodeLimits(max_decode_cpu_s=float(value))


def test_inspect_applies_the_configured_limits():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMA_BROKER_")}
    env["MMA_BROKER_LIMITS__MAX_JSON_DEPTH"] = "2"
    proc = subprocess.run([sys.executable, "-m", "broker", "inspect", str(IGWN_INITIAL)], capture_output=True,
                          text=True, env=env, cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 1 and "max_json_depth = 2" in proc.stderr


# ---------------------------------------------------------------- round 2
def test_long_digit_runs_do_not_make_the_json_error_quadratic():
    """Hundreds of 4,300-digit runs inside a string, then one 4,301-digit integer: the
    regex that located the integer backtracked (1.7 MB: 4.8 s; 16 MB: 41 s)."""
    obj = json.loads(GUANO.read_text())
    obj["additional_info"] = " ".join(["7" * 4300] * 400)
    data = (json.dumps(obj)[:-1] + ', "x": ' + "1" * 4301 + "}").encode()
    cpu, exc = _cpu(lambda: decode_unguarded(data))
    assert exc is not None and "has 4,301 digits" in str(exc)
    assert cpu < 1.0, f"{cpu:.2f} s of CPU"


@pytest.mark.parametrize("char", ["\u202e", "\u2066", "\u2028", "\u2029", "\u200f"])
def test_bidi_controls_and_line_separators_are_refused_in_ids(char):
    """U+202E shows an id reversed on a terminal ('Trojan Source'); U+2028 breaks lines."""
    with pytest.raises(DecodeError, match="control character"):
        decode_unguarded(_gcn(id=[f"745121685{char}gpj.exe"]))


def test_reason_kinds_of_follow_up_dead_letters():
    from broker.pipeline.deadletter import reason_kind

    assert reason_kind("follow-up trigger: not an mma.events v1 message") == "unreadable mma.events record"
    assert reason_kind("followup.worker failed: DataError: unsupported Unicode escape") == "follow-up error: DataError"


# ---------------------------------------------------------------- round 3: the reason itself
def _reason(data: bytes) -> str:
    with pytest.raises(DecodeError) as info:
        decode_unguarded(data)
    return str(info.value)


@pytest.mark.parametrize("make", [
    lambda: json.dumps({"mission": "X\n\x1b[2J\u202e", "alert_type": "initial", "trigger_time": "nope"}).encode(),
    lambda: GBM_VOEVENT.read_bytes().replace(b'ivorn="ivo://nasa.gsfc.gcn/',
                                             b'ivorn="ivo://nasa.gsfc.gcn/&#10;&#13;&#x85;&#x202E;', 1),
    lambda: json.dumps({**json.loads(IGWN_INITIAL.read_text()), "superevent_id": "MS1\x1b[2J\nX",
                        "alert_type": "bogus"}).encode(),
], ids=["gcn-mission", "voevent-ivorn", "igwn-superevent_id"])
def test_a_reason_quoting_the_alert_is_one_printable_line(make):
    """Decoders quote ids and names from the alert; the DecodeError escapes them."""
    from broker.text import printable

    reason = _reason(make())
    assert "\n" not in reason and "\r" not in reason and printable(reason) == reason
    assert "\\x1b" in reason or "\\u202e" in reason


def test_a_reason_quoting_a_5_mb_value_is_cut_keeping_its_end():
    data = re.sub(rb'name="Packet_Type"\s+value="[^"]*"', b'name="Packet_Type" value="' + b"x" * 5_000_000 + b'"',
                  GBM_VOEVENT.read_bytes())
    reason = _reason(data)
    assert len(reason) <= DecodeError.MAX_REASON_CHARS and "…" in reason
    assert reason.startswith("VOEvent ivo://nasa.gsfc.gcn/Fermi#GBM_Flt_Pos")
