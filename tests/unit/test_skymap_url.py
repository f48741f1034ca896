"""Sky maps given only by URL (broker.enrich.localization.fetch_localization and the
enrich stage with ``[enrich] fetch_skymap_urls``), served by a local http.server thread:
no internet.

The map served is the repository's real flat Fermi GBM map
(tests/data/gcn/skymaps/fermi_gbm_skymap.fits.gz, NSIDE 8 RING). The alerts are real:
LVK's S200302c preliminary VOEvent (its ``skymap_fits`` points at GraceDB) and the GCN
schema's Fermi GBM ground notice (``healpix_url`` at HEASARC); each test edits the URL to
the local server, and says so.
"""

from __future__ import annotations

import http.server
import threading

import pytest

from broker.enrich.config import EnrichSettings
from broker.enrich.localization import (
    SkymapUnreachable, fetch_localization, fetch_skymap_bytes, read_checked, skymap_url_of,
)
from broker.pipeline.enrich import EnrichHandler
from broker.sources import decode
from tests.conftest import DATA
from tests.unit.test_enrich_stage import PROV, MemArchive, MemGroups, MemLocalizations, docs, feed

GBM_MAP = DATA / "gcn/skymaps/fermi_gbm_skymap.fits.gz"
LVK_VOEVENT = DATA / "voevent/hop-client/S200302c-1-Preliminary.xml"
GBM_NOTICE = DATA / "gcn/gcn-schema/gcn/notices/fermi/gbm/trigger.ground1.example.json"
LVK_URL = "https://gracedb.ligo.org/api/superevents/S200302c/files/bayestar.fits.gz,0"
GBM_URL = ("http://heasarc.gsfc.nasa.gov/FTP/fermi/data/gbm/triggers/2024/bn240812094/quicklook/"
           "glg_healpix_all_bn240812094.fit")


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        routes = {"/gbm.fits.gz": GBM_MAP.read_bytes(), "/not-fits": b"<html>not a map</html>"}
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/gbm.fits.gz")
            self.end_headers()
            return
        body = routes.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fetch_gives_the_file_bytes_and_the_map(server):
    assert fetch_skymap_bytes(f"{server}/gbm.fits.gz") == GBM_MAP.read_bytes()
    assert fetch_skymap_bytes(f"{server}/moved") == GBM_MAP.read_bytes()  # a redirect is followed
    (ev,) = decode(GBM_NOTICE.read_bytes().replace(GBM_URL.encode(), f"{server}/gbm.fits.gz".encode()))  # edited
    sky = fetch_localization(ev)
    ref = read_checked(GBM_MAP.read_bytes())  # the same checks and flat merge as an embedded map
    assert (sky.uniq == ref.uniq).all() and (sky.probdensity == ref.probdensity).all()


@pytest.mark.parametrize("path,kwargs,match", [
    ("/missing", {}, "HTTP 404"),
    ("/gbm.fits.gz", {"max_bytes": 100}, "over the limit 100"),
    ("/gbm.fits.gz", {"schemes": ["https"]}, "scheme 'http' not allowed"),
])
def test_fetch_failures_are_one_line(server, path, kwargs, match):
    with pytest.raises(SkymapUnreachable, match=match) as err:
        fetch_skymap_bytes(f"{server}{path}", timeout_s=5, **kwargs)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{server}{path}: ")


def test_unreachable_and_disallowed_urls():
    with pytest.raises(SkymapUnreachable, match="ConnectError"):
        fetch_skymap_bytes(f"http://127.0.0.1:{_closed_port()}/map.fits", timeout_s=5)
    for url in ("file:///etc/passwd", "ftp://example.org/map.fits"):
        with pytest.raises(SkymapUnreachable, match="not allowed"):
            fetch_skymap_bytes(url)


class Groups(MemGroups):
    def get(self, key):  # None for an unknown group, as GroupStore.get
        return super().get(key) if key in self.groups else None


def _stage(**settings):
    locs, groups, archive = MemLocalizations(), Groups(), MemArchive()
    h = EnrichHandler(localizations=locs, groups=groups, archive=archive, settings=EnrichSettings(**settings),
                      enriched_topic="mma.events.enriched", coincidences_topic="mma.coincidences", provenance=PROV,
                      index_positions=locs.index)
    h.mem = (locs, groups, archive)
    return h


def test_stage_fetches_the_map_of_an_lvk_voevent(server):
    raw = LVK_VOEVENT.read_bytes().replace(LVK_URL.encode(), f"{server}/gbm.fits.gz".encode())  # URL edited
    (ev,) = decode(raw)
    assert skymap_url_of(ev) == f"{server}/gbm.fits.gz"
    h = _stage(fetch_skymap_urls=True, skymap_url_timeout_s=5)
    (doc,) = docs(feed(h, raw), "mma.events.enriched")
    loc = doc["enrichment"]["localization"]
    assert doc["enrichment"]["error"] is None and loc["kind"] == "skymap" and loc["from_event"] == doc["id"]
    assert h.stats.fetched_maps == 1
    off = _stage()  # off by default: nothing fetched, no localization, no error
    (doc,) = docs(feed(off, raw), "mma.events.enriched")
    assert doc["enrichment"]["localization"] is None and doc["enrichment"]["error"] is None
    assert off.stats.fetched_maps == 0


def test_stage_records_an_unreachable_url_and_keeps_the_point(server):
    url = f"http://127.0.0.1:{_closed_port()}/glg_healpix.fit"
    raw = GBM_NOTICE.read_bytes().replace(GBM_URL.encode(), url.encode())  # URL edited to a closed port
    h = _stage(fetch_skymap_urls=True, skymap_url_timeout_s=5)
    (doc,) = docs(feed(h, raw), "mma.events.enriched")
    err = doc["enrichment"]["error"]
    assert err.startswith(f"sky map URL not reachable: {doc['id']}: {url}: ConnectError")
    assert doc["enrichment"]["localization"]["kind"] == "point"  # the notice's own position, still stored
    bad = GBM_NOTICE.read_bytes().replace(GBM_URL.encode(), f"{server}/not-fits".encode())  # URL edited
    (doc,) = docs(feed(_stage(fetch_skymap_urls=True), bad), "mma.events.enriched")
    assert doc["enrichment"]["error"].startswith("localization not decoded: ")
    assert f"{server}/not-fits" in doc["enrichment"]["error"]


def test_stage_fetches_a_gbm_map_over_its_point_once_per_group(server):
    raw = GBM_NOTICE.read_bytes().replace(GBM_URL.encode(), f"{server}/gbm.fits.gz".encode())  # URL edited
    (ev,) = decode(raw)
    assert ev.localization.type == "point"
    calls = []
    h = _stage(fetch_skymap_urls=True)
    real = h.fetch
    h.fetch = lambda e: calls.append(e.id) or real(e)
    (doc,) = docs(feed(h, raw), "mma.events.enriched")
    assert doc["enrichment"]["localization"]["kind"] == "skymap" and doc["enrichment"]["error"] is None
    feed(h, raw)  # the same notice again: its group holds a sky map now, nothing downloaded
    assert calls == [doc["id"]]
