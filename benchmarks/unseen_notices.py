"""GCN notices and VOEvents mma-broker has never seen: every version in public git histories.

The decoders were built and unit-tested on the notices under ``tests/data/gcn`` and
``tests/data/voevent``. This script checks them on real notices that are not there: every
distinct version (git blob) of every example notice and VOEvent in the full history of
public repositories, pull-request branches included, less the files whose bytes are in
``tests/data`` already:

* ``nasa-gcn/gcn-schema`` (NASA GCN's unified notice schemas): ``gcn/notices/**/*.example.json``
  on every branch and pull request (``refs/pull/*/head``): notice types under review
  (Swift, SNEWS 2.0, LVK, HEASARC observations, AstroSat, BlackCAT, ...) and earlier
  versions of the released ones;
* ``lpsinger/gwcelery`` (LVK's alert pipeline: GCN VOEvents it receives in its tests),
  ``lpsinger/userguide`` (the LVK user guide's sample VOEvents since 2018),
  ``FusRoman/fink-mm`` (Fink's GCN VOEvent test data), ``4pisky/fourpisky-core``
  (4PiSky VOEvents) and ``MWATelescope/mwa_trigger`` (GCN VOEvents the MWA triggers on:
  Swift, Fermi, MAXI, ANTARES, HESS, LVC): ``*.xml`` in every commit.

Each is decoded with :func:`broker.sources.decode` (what the ingest stage runs) and checked
against the file itself read with json / lxml, not with the decoders: a JSON notice's T0
is the first of ``trigger_time``, ``observation_start``, ``alert_datetime`` (the parent
trigger is never known here: the trigger memory is cleared before each notice), its
mission and position are the file's; a VOEvent's T0 is its ``ISOTime``; an LVC VOEvent's
superevent id and alert type are its ``GraceID`` and ``AlertType`` (``retraction`` when
Param ``Retraction`` is true); a position is ``C1``/``C2``. A file that is not a notice
(a schema fragment, a LIGO_LW document) must be rejected; a notice rejected is listed
with the reason.

The repositories are cloned (``git clone --mirror``, which brings the pull-request refs)
under ``$MMA_BROKER_HOME/notices-unseen``, else ``.mma-broker/notices-unseen`` of the
checkout, or reused from there; ``--repo owner/name=PATH`` uses a local clone instead.

Run: ``python benchmarks/unseen_notices.py [--repo owner/name=PATH ...]``. Prints the
counts per kind, every rejection reason and every mismatch; exits 1 on a mismatch or an
exception other than a DecodeError. Figures recorded in docs/ingest.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"

#: Repositories read, and what is taken from each: (ref pattern, path suffix).
REPOS: dict[str, tuple[str, str]] = {
    "nasa-gcn/gcn-schema": ("--all", ".example.json"),
    "lpsinger/gwcelery": ("--all", ".xml"),
    "lpsinger/userguide": ("--all", ".xml"),
    "FusRoman/fink-mm": ("--all", ".xml"),
    "4pisky/fourpisky-core": ("--all", ".xml"),
    "MWATelescope/mwa_trigger": ("--all", ".xml"),
}
T0_FIELDS = ("trigger_time", "observation_start", "alert_datetime", "end_datetime")


def _cache() -> Path:
    home = os.environ.get("MMA_BROKER_HOME")
    return (Path(home) if home else ROOT / ".mma-broker") / "notices-unseen"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={repo}", *args], check=True, capture_output=True, text=True).stdout


def _clone(name: str, override: dict[str, Path]) -> Path:
    if name in override:
        path = override[name]
        return path / ".git" if (path / ".git").is_dir() else path
    path = _cache() / name.replace("/", "+")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "--quiet", "--mirror", f"https://github.com/{name}.git", str(path)], check=True)
    return path


def _blobs(repo: Path, suffix: str) -> dict[str, str]:
    """Every distinct blob of a path ending in ``suffix`` in any commit: blob id → a path."""
    out: dict[str, str] = {}
    commits = _git(repo, "log", "--all", "--format=%H", "--", f"*{suffix}").split()
    for commit in commits:
        for line in _git(repo, "ls-tree", "-r", commit).splitlines():
            meta, path = line.split("\t", 1)
            _mode, kind, blob = meta.split()
            if kind == "blob" and path.endswith(suffix) and (suffix == ".xml" or "/notices/" in path):
                out.setdefault(blob, path)
    return out


def _read(repo: Path, blobs: list[str]) -> Iterator[tuple[str, bytes]]:
    """Blob contents through one ``git cat-file --batch``."""
    proc = subprocess.Popen(["git", f"--git-dir={repo}", "cat-file", "--batch"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("".join(b + "\n" for b in blobs).encode())
    proc.stdin.close()
    for blob in blobs:
        header = proc.stdout.readline().split()
        size = int(header[2])
        data = proc.stdout.read(size)
        proc.stdout.read(1)
        yield blob, data
    proc.wait()


def _seen() -> set[str]:
    """sha256 of every file under tests/data (those are not 'unseen')."""
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in DATA.rglob("*") if p.is_file()}


def _close(a: str, b: str) -> bool:
    """Two ISO 8601 times within 1 ms (astropy: independent of the decoders' parser)."""
    from astropy.time import Time

    def t(x: str) -> Time:
        x = x.strip().replace(" ", "T")
        for tail in ("Z", "+00:00"):
            x = x.removesuffix(tail)
        return Time(x, scale="utc")

    return abs((t(a) - t(b)).to_value("s")) < 1e-3


def check_json(data: bytes, events: list[Any]) -> list[str]:
    """Mismatches of a decoded JSON notice against its file (read with json)."""
    obj = json.loads(data)
    [e] = events
    bad = []
    if e.source == "igwn":  # an igwn.gwalert (one sits on a gcn-schema path): its own fields
        t0 = (obj.get("event") or {}).get("time") or obj.get("time_created")
        if (e.upstream_id, e.alert_type) != (obj.get("superevent_id"), str(obj.get("alert_type")).lower()):
            bad.append(f"superevent/type {e.upstream_id}/{e.alert_type} vs {obj.get('superevent_id')}/"
                       f"{obj.get('alert_type')}")
        if not isinstance(t0, str) or not _close(e.time, t0):
            bad.append(f"T0 {e.time} vs {t0!r}")
        return bad
    field = next((k for k in T0_FIELDS if isinstance(obj.get(k), str)), None)
    if field is None or e.properties.get("time_source") != field or not _close(e.time, obj[field]):
        bad.append(f"T0 {e.time} ({e.properties.get('time_source')}) vs {field}={obj.get(field)!r}")
    if isinstance(obj.get("mission"), str) and obj["mission"] and e.mission != obj["mission"]:
        bad.append(f"mission {e.mission!r} vs {obj['mission']!r}")
    if all(isinstance(obj.get(k), (int, float)) and not isinstance(obj.get(k), bool) for k in ("ra", "dec")):
        loc = e.localization
        if loc is None or (loc.type == "point" and (abs(loc.ra - obj["ra"] % 360) > 1e-9 or abs(loc.dec - obj["dec"]) > 1e-9)):
            bad.append(f"position {loc} vs ra={obj['ra']}, dec={obj['dec']}")
    return bad


def check_xml(data: bytes, events: list[Any]) -> list[str]:
    """Mismatches of a decoded VOEvent against its file (read with lxml)."""
    from lxml import etree

    root = etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True))
    [e] = events

    def param(name: str) -> str | None:
        found = root.xpath(f"//*[local-name()='What']//*[local-name()='Param'][@name='{name}']/@value")
        return found[0].strip() if found else None

    def text(local: str) -> str | None:
        found = root.xpath(f"//*[local-name()='WhereWhen']//*[local-name()='{local}']/text()")
        return found[0].strip() if found else None

    bad = []
    iso = text("ISOTime")
    if iso is None or not _close(e.time, iso):
        if not (e.source == "igwn" and e.properties.get("time_source") == "time_created"):
            bad.append(f"T0 {e.time} vs ISOTime {iso!r}")
    if e.source == "igwn":
        retraction = (param("Retraction") or "").lower() in ("true", "1")
        alert_type = "retraction" if retraction else (param("AlertType") or "").lower()
        if (e.upstream_id, e.alert_type) != (param("GraceID"), alert_type):
            bad.append(f"superevent/type {e.upstream_id}/{e.alert_type} vs {param('GraceID')}/{alert_type}")
    else:
        c1, c2 = (next(iter(root.xpath(f"//*[local-name()='Position2D']//*[local-name()='{c}']/text()")), None)
                  for c in ("C1", "C2"))  # the source's, not an observatory's Position3D
        if e.localization is not None and e.localization.type == "point" and c1 is not None:
            if abs(e.localization.ra - float(c1) % 360) > 1e-9 or abs(e.localization.dec - float(c2)) > 1e-9:
                bad.append(f"position {e.localization.ra},{e.localization.dec} vs {c1},{c2}")
    return bad


def collect(override: dict[str, Path] | None = None, progress: bool = True) -> dict[str, Any]:
    """Decode and check every unseen notice; the figures :func:`main` prints.

    Parameters
    ----------
    override : dict, optional
        ``owner/name`` → path of a local clone to use instead of cloning.
    progress : bool
        Show a rich progress bar.

    Returns
    -------
    dict
        ``commits`` (per repository), ``files`` (unseen distinct versions), ``kinds``
        (Counter: decoded / rejected per kind and source), ``reasons`` (Counter of
        rejection reasons), ``mismatches`` and ``crashes`` (lists of lines),
        ``durations`` (s per decode, sorted).
    """
    from rich.progress import Progress

    from broker.errors import DecodeError
    from broker.sources import decode, gcn, sniff_format

    seen = _seen()
    items: list[tuple[str, str, bytes]] = []  # (repo, path, bytes)
    commits = {}
    for name, (_refs, suffix) in REPOS.items():
        repo = _clone(name, override or {})
        commits[name] = len(_git(repo, "rev-list", "--all").split())
        blobs = _blobs(repo, suffix)
        for blob, data in _read(repo, sorted(blobs)):
            if hashlib.sha256(data).hexdigest() not in seen:
                items.append((name, blobs[blob], data))
    kinds: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    mismatches: list[str] = []
    crashes: list[str] = []
    durations: list[float] = []
    with Progress(disable=not progress) as bar:
        task = bar.add_task("decoding", total=len(items))
        for name, path, data in items:
            bar.advance(task)
            where = f"{name}:{path}"
            try:
                fmt = sniff_format(data)
            except DecodeError:
                fmt = "other"
            is_notice = fmt == "json" and _is_notice(data, gcn)
            is_voevent = fmt == "voevent" and re.search(rb"<([A-Za-z0-9_]+:)?VOEvent[\s>]", data[:4000]) is not None
            kind = "json notice" if is_notice else "VOEvent" if is_voevent else f"not a notice ({fmt})"
            gcn.forget_triggers()
            t = time.perf_counter()
            try:
                events = decode(data)
            except DecodeError as exc:
                durations.append(time.perf_counter() - t)
                kinds[f"{kind}: rejected"] += 1
                reasons[f"{kind}: {_reason(str(exc))}"] += 1
                continue
            except Exception as exc:  # a decoder bug: reported, the run goes on
                crashes.append(f"{where}: {type(exc).__name__}: {exc}")
                continue
            durations.append(time.perf_counter() - t)
            kinds[f"{kind}: decoded ({events[0].source})"] += 1
            bad = check_json(data, events) if fmt == "json" else check_xml(data, events) if is_voevent else \
                ["decoded though not a notice"]
            mismatches += [f"{where}: {b}" for b in bad]
    return {"commits": commits, "files": len(items), "kinds": kinds, "reasons": reasons, "mismatches": mismatches,
            "crashes": crashes, "durations": sorted(durations)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", action="append", default=[], metavar="OWNER/NAME=PATH",
                    help="use a local clone (bare or not) instead of cloning")
    args = ap.parse_args(argv)
    r = collect({k: Path(v) for k, v in (x.split("=", 1) for x in args.repo)})
    print(f"repositories: {', '.join(f'{n} ({c:,} commits)' for n, c in r['commits'].items())}")
    print(f"files never seen (distinct versions not in tests/data): {r['files']:,}")
    for k in sorted(r["kinds"]):
        print(f"  {k}: {r['kinds'][k]:,}")
    print("rejection reasons:")
    for reason, n in r["reasons"].most_common():
        print(f"  {n:4d}  {reason}")
    d = r["durations"]
    if d:
        print(f"decode time per file: median {d[len(d) // 2] * 1e3:.2f} ms, p95 {d[int(len(d) * 0.95)] * 1e3:.2f} ms")
    print(f"load average: {os.getloadavg()[0]:.2f}")
    print(f"mismatches: {len(r['mismatches'])}")
    for m in r["mismatches"]:
        print(f"  {m}")
    print(f"exceptions other than DecodeError: {len(r['crashes'])}")
    for c in r["crashes"]:
        print(f"  {c}")
    return 1 if r["mismatches"] or r["crashes"] else 0


def _is_notice(data: bytes, gcn: Any) -> bool:
    try:
        obj = json.loads(data)
    except ValueError:
        return False
    from broker.sources import igwn

    return isinstance(obj, dict) and (gcn.is_gcn_notice(obj) or igwn.is_igwn_alert(obj))


def _reason(text: str) -> str:
    """A rejection reason without the file's own names (ivorn, schema path), to count them."""
    text = re.sub(r"VOEvent \S+: ", "VOEvent <ivorn>: ", text)
    text = re.sub(r"GCN notice \S+: ", "GCN notice <schema>: ", text)
    text = re.sub(r"at /[^)]*\)", "at <path>)", text)
    return text[:160]


if __name__ == "__main__":
    sys.exit(main())
