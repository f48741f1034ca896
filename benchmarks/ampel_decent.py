"""AMPEL's own ZiAlertSupplier + DecentFilter on ZTF alert files (runs in AMPEL's venv).

This script imports nothing from mma-broker: it runs with the interpreter of a separate
virtual environment holding ``ampel-ztf`` from PyPI (``benchmarks/ampel_venv.py`` makes it),
so the reference decisions come from AMPEL's code alone. Used by
``tests/unit/test_ztf_decent_ampel.py`` (decision-for-decision parity) and
``benchmarks/bench_filters.py`` (throughput on the same bytes).

Each input file must be one Avro container with one alert, what the ZTF stream carries
(AMPEL's avro deserializer reads only the first record of a file). Alerts go through
``ZiAlertSupplier`` exactly as AMPEL's AlertConsumer feeds it (a loader yielding a
file-like object per alert; ``fastavro.reader`` per alert; ``shape_alert_dict``) and
then ``DecentFilter.process``.

Commands
--------
``decide DIR CONFIGS.json [GAIA.json]``
    CONFIGS.json: ``{name: {DecentFilter parameters}}``. Prints one JSON document:
    ``{"ampel_ztf": version, "results": {name: [{"file", "candid", "accepted",
    "reason"}...]}}`` where ``reason`` is the key of the ``extra`` of DecentFilter's
    last debug log call (``nDet``, ``tSpan``, ``rb``, ...; ``accepted`` when it
    accepted; ``raised:<type>`` when it raised). GAIA.json, a list of sources
    ``{"ra", "dec", "Mag_G", "PMRA", ...}``, replaces the catsHTM cone search (the only
    I/O of DecentFilter) with a search over these sources, distances from astropy's
    ``SkyCoord.separation``.
``serve DIR CONFIG.json``
    Benchmark server: loads the files, then reads lines ``START COUNT`` on stdin, runs
    supplier + filter over COUNT alerts cycling from START, and answers with the
    elapsed ``time.perf_counter`` seconds (one line each); ``quit`` ends.
"""

from __future__ import annotations

import io
import json
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from ampel.abstract.AbsAlertLoader import AbsAlertLoader
from ampel.base.AuxUnitRegister import AuxUnitRegister
from ampel.log.AmpelLogger import AmpelLogger
from ampel.ztf.alert.ZiAlertSupplier import ZiAlertSupplier
from ampel.ztf.t0.DecentFilter import DecentFilter


class BytesAlertLoader(AbsAlertLoader[io.BytesIO]):
    """An AMPEL alert loader over alert bytes held in memory (refilled with :meth:`feed`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._it: Any = iter(())

    def feed(self, messages: list[bytes]) -> None:
        self._it = iter(messages)

    def __next__(self) -> io.BytesIO:
        return io.BytesIO(next(self._it))


AuxUnitRegister._dyn["BytesAlertLoader"] = BytesAlertLoader


class _Recorder:
    """Stands in for DecentFilter's logger: keeps the ``extra`` key of the last debug call."""

    def __init__(self) -> None:
        self.last: str | None = None

    def debug(self, msg: Any = None, *args: Any, extra: dict | None = None, **kwargs: Any) -> None:
        if extra:
            self.last = next(iter(extra))

    def info(self, *args: Any, **kwargs: Any) -> None:
        pass

    warn = warning = error = info


def make_filter(params: dict[str, Any], gaia: list[dict[str, Any]] | None = None) -> tuple[DecentFilter, _Recorder]:
    flt = DecentFilter(logger=AmpelLogger.get_logger(), **params)
    flt.post_init()
    rec = _Recorder()
    object.__setattr__(flt, "logger", rec)
    if gaia is not None:
        from astropy.coordinates import SkyCoord

        cat = SkyCoord([s["ra"] for s in gaia], [s["dec"] for s in gaia], unit="deg")
        keys = ("Mag_G", "PMRA", "ErrPMRA", "PMDec", "ErrPMDec", "Plx", "ErrPlx", "ExcessNoiseSig")

        def cone_search_all(ra: float, dec: float, requests: list[dict[str, Any]]) -> list[Any]:
            (req,) = requests
            sep = SkyCoord(ra, dec, unit="deg").separation(cat).arcsec
            found = [{"body": {k: gaia[i].get(k) for k in keys}, "dist_arcsec": float(sep[i])}
                     for i in range(len(gaia)) if sep[i] <= req["rs_arcsec"]]
            return [found or None]

        object.__setattr__(flt, "cone_search_all", cone_search_all)
    return flt, rec


def load(directory: str) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted(Path(directory).glob("*.avro"))]


def decide(directory: str, configs_path: str, gaia_path: str | None = None) -> None:
    files = load(directory)
    configs = json.loads(Path(configs_path).read_text())
    gaia = json.loads(Path(gaia_path).read_text()) if gaia_path else None
    supplier = ZiAlertSupplier(loader={"unit": "BytesAlertLoader"})
    results: dict[str, list[dict[str, Any]]] = {}
    for name, params in configs.items():
        flt, rec = make_filter(params, gaia if params.get("gaia_rs", 0) > 0 else None)
        supplier.alert_loader.feed([b for _, b in files])
        out = []
        for (fname, _), alert in zip(files, supplier):
            rec.last = None
            try:
                res = flt.process(alert)
                accepted = res is not None and res is not False
                reason = "accepted" if accepted else (rec.last or "rejected")
            except Exception as exc:  # AMPEL's consumer counts this alert as not accepted
                accepted, reason = False, f"raised:{type(exc).__name__}"
            out.append({"file": fname, "candid": alert.id, "accepted": accepted, "reason": reason})
        results[name] = out
    json.dump({"ampel_ztf": version("ampel-ztf"), "results": results}, sys.stdout)
    sys.stdout.write("\n")


def serve(directory: str, config_path: str) -> None:
    messages = [b for _, b in load(directory)]
    flt, _ = make_filter(json.loads(Path(config_path).read_text()))
    supplier = ZiAlertSupplier(loader={"unit": "BytesAlertLoader"})
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        start, count = map(int, line.split())
        batch = [messages[(start + i) % len(messages)] for i in range(count)]
        supplier.alert_loader.feed(batch)
        t0 = time.perf_counter()
        for alert in supplier:
            flt.process(alert)
        print(f"{time.perf_counter() - t0:.9f}", flush=True)


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"decide": decide, "serve": serve}[cmd](*args)
