"""filters.ztf_history: the projection decoder equals fastavro's full decode; hostile input is a clear DecodeError."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import fastavro
import numpy as np
import pytest

from broker.errors import DecodeError
from broker.limits import DecodeLimits, decode_scope
from broker.sources import decode
from filters.api import FilterInput
from filters.ztf_history import Columns, ZtfHistory, _plan, decode_history, jit_enabled

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "ztf"
FILES = sorted(DATA.rglob("*.avro"))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _check(hist: ZtfHistory, rec: dict) -> int:
    """Assert ``hist`` equals fastavro's record; return the number of values compared."""
    assert hist.candid == rec["candid"] and hist.object_id == rec["objectId"] and hist.schemavsn == rec["schemavsn"]
    cand = _flat(rec["candidate"])
    assert set(hist.candidate) == set(cand)
    bad = [k for k in cand if not _same(cand[k], hist.candidate[k])]
    assert not bad, [(k, cand[k], hist.candidate[k]) for k in bad]
    n = len(cand)
    assert hist.prv_candidates_null == (rec["prv_candidates"] is None)
    for table in ("prv_candidates", "fp_hists"):
        rows = [_flat(r) for r in rec.get(table) or []]
        cols: Columns = getattr(hist, table)
        assert len(cols) == len(rows)
        for name in cols.names if rows else ():
            arr, null = cols[name], cols.null(name)
            assert arr.shape == (len(rows),)
            for i, r in enumerate(rows):
                v = r[name]
                assert bool(null[i]) == (v is None), (table, i, name)
                if v is None:
                    continue
                if isinstance(v, float):
                    assert arr.dtype == np.float64 and (arr[i] == v or (math.isnan(v) and math.isnan(arr[i]))), (table, i, name)
                elif isinstance(v, (str, bytes)):
                    assert arr[i] == v, (table, i, name)
                else:
                    assert arr.dtype == np.int64 and int(arr[i]) == v, (table, i, name)
                n += 1
        for i in range(min(len(rows), 3)):  # row() gives fastavro's values too
            row = cols.row(i)
            assert all(_same(rows[i][k], row[k]) for k in rows[i])
    return n


def test_equal_to_fastavro_on_every_real_alert() -> None:
    compared = alerts = 0
    for path in FILES:
        raw = path.read_bytes()
        records = list(fastavro.reader(io.BytesIO(raw)))
        for rec in records:
            compared += _check(decode_history(raw, candid=rec["candid"]), rec)
            alerts += 1
        if len(records) == 1:
            compared += _check(decode_history(raw), records[0])
    assert alerts == 36 and compared > 30_000


def test_detection_span_and_candidate_pick_equal_fastavro_on_every_real_alert() -> None:
    """What ztf-decent reads: the detection count and span (AMPEL's photopoints) and a few candidate fields."""
    names = ("jd", "rb", "isdiffpos", "nbad", "distpsnr1", "drb", "no_such_field")
    spans = 0
    for path in FILES:
        raw = path.read_bytes()
        for rec in fastavro.reader(io.BytesIO(raw)):
            hist = decode_history(raw, candid=rec["candid"])
            jd = [rec["candidate"]["jd"]] + [p["jd"] for p in rec["prv_candidates"] or () if p.get("candid") is not None]
            assert hist.detection_span() == (len(jd), max(jd) - min(jd))
            spans += len(jd) > 1 and max(jd) > min(jd)
            got = hist.candidate_columns.pick(names)
            assert all(_same(rec["candidate"].get(k), v) for k, v in zip(names, got)), (path.name, got)
    assert spans > 10  # not only single detections
    hist = next(h for h in (decode_history(f.read_bytes()) for f in FILES) if h.detection_jd().size > 1)
    hist._det_span = None
    hist.detection_jd()[1:] = float("nan")  # a null jd among the detections: NaN, as numpy's max - min
    n, span = hist.detection_span()
    assert n == hist.detection_jd().size and span != span


def test_event_picks_the_alert_of_a_multi_alert_container() -> None:
    raw = (DATA / "fink-client" / "avro_multi_alerts_other.avro").read_bytes()
    records = list(fastavro.reader(io.BytesIO(raw)))
    events = decode(raw)
    assert len(events) == 3
    for ev, rec in zip(events, records):
        hist = FilterInput(ev, raw=raw).ztf_history()
        assert hist.candid == rec["candid"] and len(hist.prv_candidates) == len(rec["prv_candidates"])
        det = [rec["candidate"]["jd"]] + [p["jd"] for p in rec["prv_candidates"] if p.get("candid") is not None]
        assert hist.detection_jd().tolist() == det
    with pytest.raises(DecodeError, match="no ZTF alert with candid 1"):
        decode_history(raw, candid=1)


def test_history_decoded_once_for_many_filters() -> None:
    raw = FILES[0].read_bytes()
    (event,) = decode(raw)
    calls = []

    def counting(data: bytes, ev) -> ZtfHistory:
        calls.append(1)
        return decode_history(data, ev)

    fi = FilterInput(event, raw=raw, history_decoder=counting)
    assert all(fi.ztf_history() is fi.ztf_history() for _ in range(20)) and len(calls) == 1


def test_plain_python_scan_gives_the_same_columns() -> None:
    """NUMBA_DISABLE_JIT=1 runs the scan as plain Python (the fallback): same values on two real alerts."""
    if not jit_enabled():
        pytest.skip("already running without numba")
    code = ("import json,sys; from filters.ztf_history import decode_history, jit_enabled; assert not jit_enabled();"
            "out=[]\nfor p in sys.argv[1:]:\n h=decode_history(open(p,'rb').read());"
            " out.append([h.candid, h.prv_candidates['jd'].tolist(), h.fp_hists.n, h.candidate['magpsf']])\nprint(json.dumps(out))")
    paths = [str(FILES[0]), str(next(p for p in FILES if "20231012" in str(p)))]
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    got = json.loads(subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, env=env,
                                    check=True, cwd=ROOT).stdout)
    for p, (candid, jd, nfp, mag) in zip(paths, got):
        h = decode_history(Path(p).read_bytes())
        assert [candid, jd, nfp, mag] == [h.candid, h.prv_candidates["jd"].tolist(), h.fp_hists.n, h.candidate["magpsf"]]


# ----------------------------------------------------------------------------- hostile input
def _one(path: Path) -> tuple[dict, dict]:
    with path.open("rb") as fh:
        r = fastavro.reader(fh)
        return r.writer_schema, next(r)


def _container(schema: dict, payload: bytes, count: int = 1) -> bytes:
    """An uncompressed container holding ``payload`` as its only block."""
    buf = io.BytesIO()
    fastavro.writer(buf, schema, [], sync_marker=b"S" * 16)
    head = buf.getvalue()

    def varint(n: int) -> bytes:
        n = (n << 1) ^ (n >> 63)
        out = bytearray()
        while n > 0x7F:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)
        return bytes(out)

    return head + varint(count) + varint(len(payload)) + payload + b"S" * 16


def _record_bytes(schema: dict, rec: dict) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), rec)
    return buf.getvalue()


def test_truncated_history_names_table_item_and_offset() -> None:
    schema, rec = _one(next(p for p in FILES if "20231012" in str(p)))
    nocut = _record_bytes(schema, dict(rec, cutoutScience=None, cutoutTemplate=None, cutoutDifference=None))
    with pytest.raises(DecodeError, match=r"corrupt ZTF alert history: fp_hists\[20\]\.\w+: "
                                          r"value runs past the end of the block at byte \d+ of block 0 \(record 0\)"):
        decode_history(_container(schema, nocut[:-30]))
    body = _record_bytes(schema, rec)
    # a record that ends early inside the history: its item count is refused before any allocation
    cut = len(_record_bytes(schema, dict(rec, prv_candidates=None, fp_hists=None, cutoutScience=None,
                                         cutoutTemplate=None, cutoutDifference=None)))
    with pytest.raises(DecodeError, match=r"prv_candidates: array block count larger than the bytes left can hold"):
        decode_history(_container(schema, body[: cut + 300]))


def _lean(path: Path) -> tuple[dict, bytes, int, bytes]:
    """(schema, record bytes with null history and cutouts, offset of the prv_candidates union byte, its array branch)."""
    schema, rec = _one(path)
    names = [f["name"] for f in schema["fields"]]
    trailing = names[names.index("prv_candidates"):]
    body = _record_bytes(schema, dict(rec, **dict.fromkeys(trailing)))
    pos = len(body) - len(trailing)
    array_branch = b"\x00" if body[pos] == 2 else b"\x02"  # zig-zag 1 / 0: the other branch of [null, array]
    return schema, body, pos, array_branch


def test_block_count_larger_than_bytes_refused_before_allocation() -> None:
    schema, body, pos, arr = _lean(FILES[0])
    evil = body[:pos] + arr + b"\xfe\xff\xff\xff\xff\xff\xff\x7f" + b"\x00" * 64
    with pytest.raises(DecodeError, match=r"prv_candidates: array block count larger than the bytes left can hold at byte \d+"):
        decode_history(_container(schema, evil))


def test_item_budget_is_max_array_items() -> None:
    raw = next(p for p in FILES if "20231012" in str(p)).read_bytes()
    with decode_scope(DecodeLimits(max_array_items=500)):
        with pytest.raises(DecodeError, match="max_array_items = 500"):
            decode_history(raw)
    with decode_scope(DecodeLimits(max_message_bytes=1000)):
        with pytest.raises(DecodeError, match="max_message_bytes"):
            decode_history(raw)


def test_bad_union_index_and_overlong_varint() -> None:
    schema, body, pos, arr = _lean(FILES[0])
    with pytest.raises(DecodeError, match=r"prv_candidates: union branch index out of range"):
        decode_history(_container(schema, body[:pos] + b"\x08" + body[pos + 1:]))
    with pytest.raises(DecodeError, match="prv_candidates: varint longer than 10 bytes"):
        decode_history(_container(schema, body[:pos] + arr + b"\xff" * 11 + b"\x00" * 8))


def test_not_ztf_and_not_avro() -> None:
    with pytest.raises(DecodeError, match="not an Avro container"):
        decode_history(b"{}")
    buf = io.BytesIO()
    fastavro.writer(buf, {"type": "record", "name": "other", "fields": [{"name": "candid", "type": "long"}]}, [{"candid": 1}])
    with pytest.raises(DecodeError, match="not a ZTF alert"):
        decode_history(buf.getvalue())


def test_schema_the_plan_cannot_express_falls_back_to_fastavro() -> None:
    schema, rec = _one(FILES[0])
    odd = json.loads(json.dumps(schema))
    for f in odd["fields"]:
        if f["name"] == "candidate":
            f["type"]["fields"].append({"name": "extra", "type": ["null", "int", "string"], "default": None})
    rec = dict(rec, candidate=dict(rec["candidate"], extra="x"))
    buf = io.BytesIO()
    fastavro.writer(buf, odd, [rec])
    assert _plan(json.dumps(odd).encode()).tables is None
    hist = decode_history(buf.getvalue())
    assert hist.candid == rec["candid"] and hist.candidate["extra"] == "x"
    assert hist.prv_candidates["jd"].tolist() == [p["jd"] for p in rec["prv_candidates"]]
