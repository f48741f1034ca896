"""The real stack the browser tests drive, started once for all of them.

One fixture, :func:`web_stack`, shared by every browser test, starts what a user of the
quickstart has (package scope: it is stopped when the browser tests are done, so the
pipeline and the server it runs do not stay up through the rest of the suite):

* the real Kafka (``MMA_BROKER_TEST_KAFKA``, as every integration test) and the session's
  embedded PostgreSQL, with a database of this module's own (the outbox is counted exactly);
* a local SMTP server (aiosmtpd on a free port) standing in for the GCN Circulars address;
* the quickstart's GRB 230307A follow-up request (the published GCN values, a real SPI-ACS
  detection from the bundled light curve: a follow-up plot and a GCN Circular draft
  waiting for approval) and a handful of bundled real alerts replayed into Kafka
  (:data:`ALERTS`: the LVK mock superevent MS181101ab with its sky map, a Fermi GBM trigger
  followed by its notices, one ZTF alert);
* ``mma-broker run`` (every stage: ingest, enrich, filters, follow-up, reports, publish) as
  a long-running subprocess, so an alert replayed during a test goes through the pipeline
  and reaches the live page, and an approval on the desk is sent by the running sender;
* ``mma-broker serve`` on a free port (a real uvicorn server in its own process).

The fixture returns once the pipeline has archived and enriched :data:`ALERTS` and the
circular draft is pending. Headless Chromium is Debian's (``/usr/bin/chromium``, installed
by deploy/test.sh as root), driven by Playwright; no browser is downloaded. Screenshots
(1280 × 800) go to docs/img/web-*.png only when ``MMA_BROKER_SCREENSHOTS=1``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT, _new_database, delete_topics, free_port, run_cli, smtp_capture
from tests.integration.test_followup_e2e import GRB230307A  # the quickstart's request (published GCN values)

CHROMIUM = Path("/usr/bin/chromium")
DATA = ROOT / "tests" / "data"
USERGUIDE = DATA / "igwn" / "userguide"
GWCELERY = DATA / "gcn" / "gwcelery-kafka"
IMG = ROOT / "docs" / "img"
VIEWPORT = {"width": 1280, "height": 800}

GRB_GROUP = "user:GRB 230307A"
GW_GROUP = "igwn:MS181101ab"
ALERTS = [USERGUIDE / "MS181101ab-preliminary.json", USERGUIDE / "MS181101ab-initial.json",
          GWCELERY / "kafka_alert_fermi_alert.json", GWCELERY / "kafka_alert_fermi_flight.json",
          sorted((DATA / "ztf").rglob("*.avro"))[0]]
"""The alerts replayed before the pages are opened (real upstream bytes)."""
LIVE_ALERT = GWCELERY / "kafka_alert_icecube_gold.json"
"""Replayed while the live page is open (an IceCube track: a group of its own)."""
AUTHORS = "A. Person (Inst.), B. Person (Inst.) report on behalf of the INTEGRAL SPI-ACS team:"
FROM, TO = "integral@example.org", "circulars@example.org"
USER, PASSWORD = "desk-tester", "correct horse battery staple 13"
STACK_TIMEOUT_S = 120.0


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not CHROMIUM.exists():
        return (f"{CHROMIUM} is missing: deploy/test.sh installs Debian's chromium when run as root "
                "(apt-get install chromium); the browser tests need it")
    import importlib.util

    if importlib.util.find_spec("playwright") is None:
        return "playwright (Python) is not installed: pip install -e '.[test]'"
    return None


@pytest.fixture(scope="package")
def smtp_server():
    """A real SMTP server (aiosmtpd) on a free local port; ``received``: the envelopes."""
    with smtp_capture() as server:
        yield server


def _stack_env(home: Path, kafka: str, db_url: str, smtp_port: int, web_port: int) -> dict[str, str]:
    """The environment of every ``mma-broker`` process of the stack (the quickstart's
    settings, in a topic prefix, consumer group and home of this session's own)."""
    from followup.bundled import bundled_data_dir

    tag = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMA_BROKER_") or k == "MMA_BROKER_TEST_KAFKA"}
    data = str(bundled_data_dir())
    hermes_topic = f"w{tag}.hermes.test"
    env.update(
        MMA_BROKER_HOME=str(home),
        MMA_BROKER_GROUP_ID=f"web-{tag}",
        MMA_BROKER_KAFKA__BOOTSTRAP_SERVERS=kafka,
        MMA_BROKER_KAFKA__TOPIC_PREFIX=f"w{tag}.",
        MMA_BROKER_ARCHIVE__DATABASE_URL=db_url,
        MMA_BROKER_METRICS__PORT="0",
        MMA_BROKER_FOLLOWUP__LIGHTCURVES__KIND="local",
        MMA_BROKER_FOLLOWUP__LIGHTCURVES__DIRECTORY=data,
        MMA_BROKER_FOLLOWUP__ORBIT_DIRECTORY=data,
        MMA_BROKER_FOLLOWUP__MMODA_URL="http://127.0.0.1:9/dispatch-data",
        MMA_BROKER_FOLLOWUP__RETRY_ATTEMPTS="1",
        MMA_BROKER_PUBLISH__PUBLIC_BASE_URL=f"http://127.0.0.1:{web_port}",
        MMA_BROKER_PUBLISH__SERVE_PORT=str(web_port),
        MMA_BROKER_PUBLISH__HERMES__TOPIC=hermes_topic,
        MMA_BROKER_PUBLISH__HERMES__TEST_TOPICS=json.dumps([hermes_topic]),
        MMA_BROKER_PUBLISH__HERMES__SUBMITTER="mma-broker browser test",
        MMA_BROKER_PUBLISH__HERMES__AUTHORS=AUTHORS,
        MMA_BROKER_PUBLISH__GCN_CIRCULAR__SMTP_HOST="127.0.0.1",
        MMA_BROKER_PUBLISH__GCN_CIRCULAR__SMTP_PORT=str(smtp_port),
        MMA_BROKER_PUBLISH__GCN_CIRCULAR__FROM_ADDRESS=FROM,
        MMA_BROKER_PUBLISH__GCN_CIRCULAR__TO=json.dumps([TO]),
        MMA_BROKER_PUBLISH__GCN_CIRCULAR__AUTHORS=AUTHORS,
        MMA_BROKER_PUBLISH__GCN_CIRCULAR__TIMEOUT_S="10",
        MMA_BROKER_WEB__SESSION_SECRET=uuid.uuid4().hex + uuid.uuid4().hex,
        PYTHONUNBUFFERED="1",
    )
    return env


def _stop(proc: subprocess.Popen, name: str, timeout: float = 30.0) -> None:
    """SIGTERM a process of the stack and wait for it (SIGKILL after ``timeout``)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        print(f"web stack: {name} did not stop within {timeout:.0f} s; killed")
        proc.kill()
        proc.wait(10)


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _wait(what: str, check, procs: dict[str, tuple[subprocess.Popen, Path]], timeout: float):
    """Poll ``check()`` until it returns a truthy value; fail with the processes' logs."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        for name, (proc, log) in procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"web stack: {name} exited {proc.returncode} while waiting for {what}\n"
                                     f"{_tail(log)}")
        try:
            got = check()
        except Exception as exc:  # noqa: BLE001 - not ready yet (a table not made, a port not open)
            got, last_exc = None, exc
        else:
            last_exc = None
        if got:
            return got
        time.sleep(0.3)
    logs = "\n".join(f"--- {name}\n{_tail(log)}" for name, (_, log) in procs.items())
    raise AssertionError(f"web stack: no {what} after {timeout:.0f} s (last error: {last_exc!r})\n{logs}")


@pytest.fixture(scope="package")
def web_stack(kafka_bootstrap, pg_url, smtp_server, tmp_path_factory):
    """The running stack (module docstring). Attributes: ``url`` (the app's base URL),
    ``env`` (the processes' environment, for ``run_cli``), ``db_url``, ``smtp``,
    ``engine`` (SQLAlchemy, for checks), ``grb_request_id``, ``replay(*paths)``,
    ``timings`` (s per setup step)."""
    reason = chromium_missing()
    if reason and os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the browser tests: {reason}")  # CI runs deploy/test.sh as root
    if reason:
        pytest.skip(reason)
    import httpx
    import sqlalchemy as sa

    home = tmp_path_factory.mktemp("webstack")
    web_port = free_port()
    timings: dict[str, float] = {}
    t_all = t = time.monotonic()
    with contextlib.ExitStack() as stack:
        db_url = stack.enter_context(_new_database(pg_url))
        env = _stack_env(home / "home", kafka_bootstrap, db_url, smtp_server.port, web_port)
        stack.callback(delete_topics, kafka_bootstrap, env["MMA_BROKER_KAFKA__TOPIC_PREFIX"])
        engine = sa.create_engine(db_url)
        stack.callback(engine.dispose)

        rid = json.loads(run_cli(env, "followup", "request", *GRB230307A, "--json").stdout)["request_id"]
        run_cli(env, "replay", *map(str, ALERTS))
        timings["request + replay"] = time.monotonic() - t

        procs: dict[str, tuple[subprocess.Popen, Path]] = {}

        def start(name: str, *args: str) -> subprocess.Popen:
            log = home / f"{name}.log"
            fh = stack.enter_context(open(log, "wb"))
            proc = subprocess.Popen([sys.executable, "-m", "broker", *args], env=env, cwd=ROOT,
                                    stdout=fh, stderr=subprocess.STDOUT)
            stack.callback(_stop, proc, name)
            procs[name] = (proc, log)
            return proc

        t = time.monotonic()
        start("run", "run")

        def enriched() -> bool:
            with engine.connect() as conn:
                n_events = conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one()
                groups = dict(conn.execute(sa.text("SELECT key, n_revisions FROM event_groups")).all())
                gw_map = conn.execute(sa.text("SELECT best_localization_id FROM event_groups WHERE key = :k"),
                                      {"k": GW_GROUP}).scalar()
            # the follow-up request is not an archived alert: only ALERTS are Events
            return n_events == len(ALERTS) and groups.get(GW_GROUP) == 2 and gw_map is not None and len(groups) >= 3

        def circular_pending() -> int | None:
            with engine.connect() as conn:
                row = conn.execute(sa.text("SELECT id FROM outbox WHERE channel = 'gcn-circular' AND key = :k "
                                           "AND state = 'pending_approval'"),
                                   {"k": f"gcn-circular:followup:{rid}"}).first()
            return row[0] if row else None

        _wait("enriched MS181101ab, Fermi GBM and ZTF groups", enriched, procs, STACK_TIMEOUT_S)
        circular_id = _wait("GCN Circular draft pending approval", circular_pending, procs, STACK_TIMEOUT_S)
        timings["pipeline done"] = time.monotonic() - t
        t = time.monotonic()  # serve needs the migrated archive: after the pipeline's first writes
        start("serve", "serve", "--host", "127.0.0.1", "--port", str(web_port))
        url = f"http://127.0.0.1:{web_port}"
        client = stack.enter_context(httpx.Client(base_url=url, timeout=10))
        _wait("answer from serve's /health", lambda: client.get("/health").status_code == 200, procs, 60)
        timings["serve up"] = time.monotonic() - t
        timings["total"] = time.monotonic() - t_all
        print("web stack ready: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))

        def replay(*paths: Path) -> None:
            run_cli(env, "replay", *map(str, paths))

        yield SimpleNamespace(url=url, env=env, db_url=db_url, smtp=smtp_server, engine=engine, client=client,
                              grb_request_id=rid, circular_id=circular_id, replay=replay, timings=timings,
                              procs=procs, home=home)


@pytest.fixture(scope="package")
def browser(web_stack):
    """Debian's headless Chromium driven by Playwright (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture()
def page(browser, web_stack):
    """A new browser context (no cookies) and page at 1280 × 800, base URL the stack's;
    console errors, answers >= 400 and uncaught script errors are collected in ``page.problems`` (text)
    and the script errors in ``page.js_errors`` (Playwright errors, with their stacks)."""
    context = browser.new_context(viewport=VIEWPORT, base_url=web_stack.url)
    context.set_default_timeout(15_000)
    pg = context.new_page()
    problems: list[str] = []
    # a resource that failed is noted with its URL by the "response" hook below; the console's
    # own line for it is not (it names no URL, and it also comes for the browser's /favicon.ico)
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
          if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    errors: list = []
    pg.on("pageerror", lambda e: (problems.append(f"page error: {e}"), errors.append(e)))
    pg.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    pg.problems = problems
    pg.js_errors = errors
    try:
        yield pg
    finally:
        context.close()


def screenshot(page, name: str) -> Path | None:
    """Save the page (1280 × 800 viewport) as docs/img/web-<name>.png when
    ``MMA_BROKER_SCREENSHOTS=1`` (CI leaves the repository as it is). Returns the path."""
    if os.environ.get("MMA_BROKER_SCREENSHOTS") != "1":
        return None
    IMG.mkdir(parents=True, exist_ok=True)
    out = IMG / f"web-{name}.png"
    tmp = out.with_suffix(".tmp.png")
    page.screenshot(path=str(tmp), full_page=False)
    shutil.move(tmp, out)
    return out
