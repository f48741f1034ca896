"""CLI start-up stays light: which heavy modules ``mma-broker --help`` and ``mma-broker
inspect FILE`` load, in a fresh interpreter. (Time itself is measured by
benchmarks/bench_cli_startup.py, never by a test.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import DATA, ROOT

HEAVY = ["sqlalchemy", "alembic", "psycopg", "confluent_kafka", "astropy", "astropy_healpix", "numpy", "scipy",
         "matplotlib", "rich", "jsonschema", "pydantic_settings", "fastavro", "lxml", "httpx", "hop"]

PROBE = """
import json, sys
sys.argv = ["mma-broker"] + sys.argv[1:]
from broker.cli import main
try:
    main()
except SystemExit:
    pass
heavy = json.loads(%r)
print(json.dumps(sorted(m for m in heavy if m in sys.modules)), file=sys.stderr)
""" % json.dumps(HEAVY)


def loaded(*args: str) -> set[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMA_BROKER_")}
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)
    return set(json.loads(proc.stderr.strip().splitlines()[-1]))


def test_help_loads_no_server_client_nor_science_library():
    # rich: typer formats its help with it
    assert loaded("--help") <= {"rich"}


@pytest.mark.parametrize("alert, allowed", [
    (DATA / "voevent/pygcn/gbm_flt_pos.xml", {"pydantic_settings", "lxml", "fastavro"}),
    (DATA / "ztf/kowalski/20231012/2475433850215010007.avro", {"pydantic_settings", "lxml", "fastavro"}),
    (DATA / "gcn/gcn-schema/gcn/notices/swift/bat/Guano.example.json",
     {"pydantic_settings", "lxml", "fastavro", "jsonschema", "numpy"}),
])
def test_inspect_loads_only_what_the_alert_needs(alert, allowed):
    """Settings (pydantic-settings) and the decoders of the three wire formats load;
    Kafka, SQLAlchemy, rich and astropy do not (astropy only for a sky map)."""
    assert loaded("inspect", str(alert)) <= allowed
