"""The archive's Alembic revisions: the core's folder plus every migrations plugin's.

The database side (an empty database gets the follow-up tables; an archive at the
core revision upgrades) is in tests/integration/test_archive.py.
"""

from __future__ import annotations

from pathlib import Path

from alembic.script import ScriptDirectory

from broker import plugins
from broker.archive.store import alembic_config, version_locations

ROOT = Path(__file__).resolve().parents[2]


def test_followup_revisions_are_a_registered_version_location():
    assert plugins.available(plugins.MIGRATIONS)["followup"].value == "followup.migrations"
    locations = [Path(p).resolve() for p in version_locations()]
    assert locations[0] == ROOT / "broker" / "archive" / "migrations" / "versions"
    assert ROOT / "followup" / "migrations" / "versions" in locations


def test_revision_graph_has_one_head_and_keeps_the_followup_ids():
    script = ScriptDirectory.from_config(alembic_config())
    assert "0007" in script.get_heads()  # the follow-up's head (other branches may add theirs)
    revisions = {r.revision: r for r in script.walk_revisions()}
    assert {"0001", "0002", "0003", "0007"} <= set(revisions)
    assert revisions["0003"].down_revision == "0002"  # follow-up groups and artifacts
    assert revisions["0007"].down_revision == "0003"  # follow-up groups become the enrich stage's
    assert Path(revisions["0007"].path).resolve().parent == ROOT / "followup" / "migrations" / "versions"
    assert Path(revisions["0003"].path).resolve().parent == ROOT / "followup" / "migrations" / "versions"
    # the ids and parent of the time when 0002 lived in the core's folder
    assert revisions["0002"].down_revision == "0001"
    assert Path(revisions["0002"].path).resolve().parent == ROOT / "followup" / "migrations" / "versions"
    assert Path(revisions["0001"].path).resolve().parent == ROOT / "broker" / "archive" / "migrations" / "versions"


def test_event_category_revision_is_a_core_branch_from_0001():
    script = ScriptDirectory.from_config(alembic_config())
    rev = script.get_revision("0008")
    assert rev.down_revision == "0001"
    # 0011 (the web API's indexes on events) continues that branch and is its head
    assert script.get_revision("0011").down_revision == "0008" and "0011" in script.get_heads()
    assert Path(rev.path).resolve().parent == ROOT / "broker" / "archive" / "migrations" / "versions"
    ids = [r.revision for r in script.walk_revisions()]
    assert len(ids) == len(set(ids))  # revision ids are global across the version locations
