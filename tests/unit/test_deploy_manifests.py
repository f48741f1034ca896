"""deploy/k8s and deploy/compose, checked offline against the code and the vendored schemas.

- every manifest under deploy/k8s is valid for kubeconform ``-strict`` against the
  Kubernetes 1.33 schemas and the Strimzi, CloudNativePG, KEDA and prometheus-operator
  CRD schemas vendored in deploy/k8s/schemas (and so is ``kubectl kustomize`` of it, when
  kubectl is there); a broken copy is refused, so the check is not vacuous;
- every topic the code uses on our cluster (derived from the settings classes of the
  core and the plugins, loaded with the cluster's own preset) has a KafkaTopic with
  replication 3 and ``min.insync.replicas`` 2, and every ``settings.topic(...)`` call in
  the code names a setting that derivation covers;
- each stage has a Deployment, a Kafka user whose ACLs cover its inputs, outputs,
  consumer group and transactional ids, and (consumer stages) a KEDA ScaledObject on
  its real consumer group, capped by its input's partitions; enrich and filters run as
  lanes, ingest as two Deployments (``--upstream``: the notices' upstreams apart from ZTF);
- the Grafana dashboard queries only metrics broker/metrics.py exports;
- deploy/compose/compose.yaml is valid for the vendored compose-spec JSON schema.
"""

from __future__ import annotations

import ast
import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "deploy" / "compose"
SCHEMAS = K8S / "schemas"
SCHEMA_LOCATIONS = [str(SCHEMAS / "kubernetes" / "{{.ResourceKind}}{{.KindSuffix}}.json"),
                    str(SCHEMAS / "crds" / "{{.Group}}" / "{{.ResourceKind}}_{{.ResourceAPIVersion}}.json")]
STAGE_LOOPS = {"ingest": None, "enrich": "enrich", "filters": "filters", "followup": "followup.worker",
               "reports": "reports", "publish": None}
"""Stage → the consumer loop whose group and transactional ids its Kafka user needs (ingest:
one loop per upstream, ``ingest.<name>``, covered by a prefix; publish: no consumer loop)."""
STAGE_IO = {
    "ingest": ([], ["events_topic", "dlq_topic"]),
    "enrich": (["events_topic"], ["enrich.enriched_topic", "enrich.coincidences_topic", "dlq_topic"]),
    "filters": (["enrich.enriched_topic"], ["filters:*", "followup.requests_topic", "dlq_topic"]),
    "followup": (["followup.requests_topic"], ["followup.results_topic", "dlq_topic"]),
    "reports": (["followup.results_topic", "enrich.coincidences_topic", "filters:optical-counterpart"],
                ["dlq_topic"]),
    "publish": ([], ["publish.gcn_notice.topic"]),
}
"""What each stage reads and writes on our Kafka, as settings (the StageSpecs of
broker/pipeline/ingest.py, broker/pipeline/enrich.py, filters/stage.py, followup/worker.py,
followup/reports/stage.py, and the gcn-notice channel of broker/sinks/gcn.py)."""


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@functools.lru_cache(maxsize=1)
def k8s_docs() -> tuple[dict, ...]:
    """Every document of deploy/k8s (parsed once; copy one before changing it)."""
    out = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name != "kustomization.yaml" and SCHEMAS not in path.parents:
            out += docs(path)
    return tuple(out)


def by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in k8s_docs() if d["kind"] == kind}


def kubeconform() -> str:
    """The kubeconform binary deploy/setup.sh builds (venv bin, $MMA_BROKER_HOME/bin, PATH)."""
    candidates = [Path(sys.prefix) / "bin" / "kubeconform", Path(sys.executable).parent / "kubeconform"]
    if os.environ.get("MMA_BROKER_HOME"):
        candidates.append(Path(os.environ["MMA_BROKER_HOME"]) / "bin" / "kubeconform")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("kubeconform")
    if found:
        return found
    pytest.skip("kubeconform is not installed: deploy/setup.sh builds it with `go install "
                "github.com/yannh/kubeconform/cmd/kubeconform@v0.7.0` (needs Go and the Go module proxy)")


def run_kubeconform(paths: list[Path]) -> subprocess.CompletedProcess:
    args = [kubeconform(), "-strict", "-summary", "-output", "json"]
    for loc in SCHEMA_LOCATIONS:
        args += ["-schema-location", loc]
    return subprocess.run(args + [str(p) for p in paths], capture_output=True, text=True, timeout=120)


def manifest_files() -> list[Path]:
    return [p for p in sorted(K8S.rglob("*.yaml")) if p.name != "kustomization.yaml" and SCHEMAS not in p.parents]


# ------------------------------------------------------------------ schemas

def test_every_manifest_is_valid_for_kubeconform_strict():
    files = manifest_files()
    proc = run_kubeconform(files)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout)["summary"]
    expected = sum(len(docs(p)) for p in files)
    assert summary == {"valid": expected, "invalid": 0, "errors": 0, "skipped": 0}, summary


KINDS = ["Deployment", "CronJob", "Kafka", "KafkaTopic", "KafkaUser", "KafkaNodePool", "Cluster", "ScheduledBackup",
         "ScaledObject", "TriggerAuthentication", "PodMonitor", "ConfigMap"]


def test_kubeconform_refuses_an_unknown_field_in_each_kind(tmp_path):
    bad = []
    for kind in KINDS:  # one kubeconform run for all: each start reads every schema
        doc = copy.deepcopy(next(d for d in k8s_docs() if d["kind"] == kind))
        (doc.get("spec") if "spec" in doc else doc)["bogusField"] = 1
        bad.append(tmp_path / f"{kind}.yaml")
        bad[-1].write_text(yaml.safe_dump(doc))
    proc = run_kubeconform(bad)
    assert proc.returncode == 1, proc.stdout
    report = json.loads(proc.stdout)
    assert report["summary"]["invalid"] == len(KINDS), report["summary"]
    refused = {Path(r["filename"]).stem for r in report["resources"]
               if r["status"] == "statusInvalid" and "bogusField" in r["msg"]}
    assert refused == set(KINDS)


def test_kubeconform_refuses_a_wrong_type_and_an_unknown_acl_operation(tmp_path):
    dep = copy.deepcopy(by_kind("Deployment")["mma-enrich-notices"])
    dep["spec"]["replicas"] = "three"
    user = copy.deepcopy(by_kind("KafkaUser")["mma-enrich"])
    user["spec"]["authorization"]["acls"][0]["operations"] = ["Reed"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all([dep, user]))
    proc = run_kubeconform([bad])
    assert json.loads(proc.stdout)["summary"]["invalid"] == 2, proc.stdout


def test_kustomize_output_is_valid_and_lists_every_manifest(tmp_path):
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = {(K8S / r).resolve() for r in kust["resources"]}
    assert all(p.is_file() for p in listed), sorted(str(p) for p in listed if not p.is_file())
    unlisted = {p.resolve() for p in manifest_files()} - listed
    assert unlisted == {(K8S / "secrets.example.yaml").resolve()}, "manifests left out of kustomization.yaml"
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (for `kubectl kustomize`) is not installed; the files were validated one by one")
    rendered = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    out = tmp_path / "rendered.yaml"
    out.write_text(rendered.stdout)
    proc = run_kubeconform([out])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    objs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    assert {d["metadata"].get("namespace") for d in objs if d["kind"] != "Namespace"} == {"mma-broker"}
    assert any(d["kind"] == "ConfigMap" and d["metadata"]["name"] == "mma-broker-dashboard" for d in objs)


# ------------------------------------------------------------------ topics from the code

@pytest.fixture
def cluster_settings(tmp_path, monkeypatch):
    """The broker's settings as the cluster runs them: the preset of the ConfigMap."""
    for key in list(os.environ):
        if key.startswith("MMA_BROKER_"):
            monkeypatch.delenv(key)
    from broker.config import load_settings

    preset = tmp_path / "mma-broker.toml"
    preset.write_text(by_kind("ConfigMap")["mma-broker-settings"]["data"]["mma-broker.toml"])
    return load_settings(config_file=preset)


def topic_settings(settings) -> dict[str, str]:
    """Every topic our cluster carries under ``settings``: ``{setting: full topic name}``.

    Walks every section of the settings (the core's and each plugin's): a str field
    named ``topic`` or ``*_topic`` is a topic, and ``[filters] topic_prefix`` + the name
    of each published filter. A section that names another cluster (``bootstrap_servers``
    or ``url`` set) and the upstreams (read from elsewhere, or by regex) are left out.
    """
    from pydantic import BaseModel

    found: dict[str, str] = {}

    def walk(model: BaseModel, path: str) -> None:
        if path and (getattr(model, "bootstrap_servers", None) or getattr(model, "url", None)):
            return
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                walk(value, f"{path}{name}.")
            elif isinstance(value, str) and (name == "topic" or name.endswith("_topic")):
                prefixed = not path.startswith("publish.hermes.")  # HERMES's names are its own
                found[path + name] = settings.topic(value) if prefixed else value

    walk(settings, "")
    f = settings.filters
    for entry in f.filters if f.enabled else []:
        if entry.publish:
            found[f"filters:{entry.name}"] = settings.topic(f.topic_prefix + entry.name)
    return found


def test_every_topic_the_code_uses_has_a_kafkatopic_with_three_replicas(cluster_settings):
    topics = by_kind("KafkaTopic")
    used = topic_settings(cluster_settings)
    assert {"events_topic", "dlq_topic", "enrich.enriched_topic", "followup.results_topic",
            "filters:ztf-decent"} <= used.keys(), used
    missing = {k: v for k, v in used.items() if v not in topics}
    assert not missing, f"topics the broker uses with no KafkaTopic in deploy/k8s/kafka/topics.yaml: {missing}"
    for name, t in topics.items():
        assert t["spec"]["replicas"] == 3, name
        assert t["spec"]["config"]["min.insync.replicas"] == 2, name
        assert t["spec"]["config"]["max.message.bytes"] >= 16 * 1024 * 1024, name
        assert t["metadata"]["labels"]["strimzi.io/cluster"] == "mma-kafka", name
    assert set(topics) == set(used.values()), f"KafkaTopics nothing uses: {set(topics) - set(used.values())}"


def test_the_topic_derivation_fails_on_a_topic_setting_the_manifests_lack(cluster_settings):
    cluster_settings.enrich.coincidences_topic = "mma.coincidences.v2"
    used = topic_settings(cluster_settings)
    assert used["enrich.coincidences_topic"] == "mma.coincidences.v2"
    assert "mma.coincidences.v2" not in by_kind("KafkaTopic")


def topic_call_attributes() -> set[str]:
    """The attribute names inside every ``<x>.topic(...)`` call of the broker's packages."""
    names: set[str] = set()
    for package in ("broker", "followup", "filters"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "topic"
                        and node.args):
                    for sub in ast.walk(node.args[0]):
                        if isinstance(sub, ast.Attribute) and "topic" in sub.attr:
                            names.add(sub.attr)
                        elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                            names.add(f"literal:{sub.value}")
    return names


def test_every_topic_call_in_the_code_names_a_setting_the_derivation_covers(cluster_settings):
    attrs = topic_call_attributes()
    assert {"events_topic", "dlq_topic", "requests_topic", "topic_prefix"} <= attrs, attrs
    covered = {key.rsplit(".", 1)[-1] for key in topic_settings(cluster_settings) if not key.startswith("filters:")}
    covered.add("topic_prefix")  # [filters] topic_prefix + a filter name: the filters: entries
    assert attrs <= covered, f"topic settings the manifests test does not derive: {attrs - covered}"


# ------------------------------------------------------------------ stages, users, KEDA

def stage_deployments() -> dict[str, dict]:
    """Stage → its Deployment (a stage run as lanes: its first lane's; :func:`lane_deployments`)."""
    out = {}
    for name, d in by_kind("Deployment").items():
        args = d["spec"]["template"]["spec"]["containers"][0]["args"]
        if args[:2] == ["run", "--stage"]:
            out.setdefault(args[2], d)
    return out


def lane_deployments() -> dict[tuple[str, str | None], dict]:
    """(stage, lane or None) → Deployment, from each one's ``run --stage S [--lane L]`` (ingest,
    ``run --stage ingest --upstream U ...``: its pods' ``mma-broker/lane`` label)."""
    out = {}
    for name, d in by_kind("Deployment").items():
        args = d["spec"]["template"]["spec"]["containers"][0]["args"]
        if args[:2] == ["run", "--stage"]:
            lane = (args[args.index("--lane") + 1] if "--lane" in args
                    else d["spec"]["template"]["metadata"]["labels"]["mma-broker/lane"] if "--upstream" in args
                    else None)
            assert (args[2], lane) not in out, (name, args)
            out[(args[2], lane)] = d
    return out


def test_each_lane_of_the_preset_has_a_deployment_per_laned_stage(cluster_settings):
    from broker.lanes import lanes_of

    lanes = [lane.name for lane in lanes_of(cluster_settings)]
    assert lanes == ["notices", "optical"], "deploy/k8s runs enrich and filters as lanes (settings.yaml)"
    deps = lane_deployments()
    for stage in ("enrich", "filters"):
        assert {lane for st, lane in deps if st == stage} == set(lanes), stage
        selectors = [deps[(stage, lane)]["spec"]["selector"]["matchLabels"] for lane in lanes]
        assert selectors[0] != selectors[1], "two Deployments must not select each other's pods"
        for lane in lanes:
            dep = deps[(stage, lane)]
            assert dep["metadata"]["name"] == f"mma-{stage}-{lane}"
            labels = dep["spec"]["template"]["metadata"]["labels"]
            assert all(labels.get(k) == v for k, v in dep["spec"]["selector"]["matchLabels"].items())
    cpu = {lane: deps[("enrich", lane)]["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
           for lane in lanes}
    assert cpu == {"notices": "250m", "optical": "1500m"}
    assert {st for st, lane in deps if lane is not None} == {"ingest", "enrich", "filters"}


def upstreams_of(dep: dict) -> list[str]:
    """The ``--upstream`` names of a Deployment's ``run`` arguments."""
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    return [args[i + 1] for i, a in enumerate(args) if a == "--upstream"]


def test_ingest_runs_the_notices_upstreams_apart_from_the_survey_stream(cluster_settings):
    from broker.lanes import SURVEY_SOURCES

    deps = {lane: d for (st, lane), d in lane_deployments().items() if st == "ingest"}
    assert set(deps) == {"notices", "optical"}
    assert deps["notices"]["metadata"]["name"] == "mma-ingest-notices"
    assert deps["optical"]["metadata"]["name"] == "mma-ingest-optical"
    ups = {lane: upstreams_of(d) for lane, d in deps.items()}
    # every upstream of the preset runs in exactly one of them
    assert sorted(ups["notices"] + ups["optical"]) == sorted(up.name for up in cluster_settings.upstreams)
    kinds = {up.name: up.kind for up in cluster_settings.upstreams}
    assert {kinds[u] for u in ups["optical"]} <= SURVEY_SOURCES
    assert not {kinds[u] for u in ups["notices"]} & SURVEY_SOURCES
    notices, optical = deps["notices"], deps["optical"]
    assert notices["spec"]["replicas"] == 1  # KEDA cannot read GCN's or Hopskotch's group lag
    assert "replicas" not in optical["spec"]
    cpu = {lane: d["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
           for lane, d in deps.items()}
    assert cpu == {"notices": "250m", "optical": "500m"}
    # the ZTF pods get neither the GCN client secret nor hop-client's auth.toml
    assert "MMA_BROKER_GCN_CLIENT_SECRET" in container_env(notices)
    assert "MMA_BROKER_GCN_CLIENT_SECRET" not in container_env(optical)
    assert "hop-auth" in {v["name"] for v in notices["spec"]["template"]["spec"]["volumes"]}
    assert "hop-auth" not in {v["name"] for v in optical["spec"]["template"]["spec"]["volumes"]}
    for lane in deps:
        sel = deps[lane]["spec"]["selector"]["matchLabels"]
        assert sel["mma-broker/lane"] == lane and sel["app.kubernetes.io/component"] == "ingest"


def test_the_cli_refuses_an_upstream_the_preset_lacks(tmp_path):
    preset = tmp_path / "mma-broker.toml"
    preset.write_text(by_kind("ConfigMap")["mma-broker-settings"]["data"]["mma-broker.toml"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMA_BROKER_")}
    env |= {"MMA_BROKER_CONFIG": str(preset), "MMA_BROKER_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", "broker", "run", "--stage", "ingest", "--upstream", "gcn",
                           "--upstream", "ztf-typo"], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 1
    assert "--upstream ztf-typo: not an [[upstreams]] entry (gcn, igwn, ztf)" in proc.stderr


def container_env(dep: dict) -> dict[str, dict]:
    return {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_one_deployment_per_registered_stage_with_health_probes(cluster_settings):
    from broker import stages

    deps = stage_deployments()
    assert set(deps) == set(stages.registered()), "each registered stage needs a Deployment in broker/stages.yaml"
    assert set(STAGE_LOOPS) == set(deps)
    port = cluster_settings.metrics.port
    assert cluster_settings.metrics.host == "0.0.0.0"
    for name, dep in deps.items():
        c = dep["spec"]["template"]["spec"]["containers"][0]
        assert c["ports"] == [{"name": "metrics", "containerPort": port}], name
        assert c["livenessProbe"]["httpGet"]["path"] == "/health", name
        assert c["readinessProbe"]["httpGet"]["path"] == "/ready", name
        assert c["startupProbe"]["httpGet"]["path"] == "/health", name
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], name
    serve = by_kind("Deployment")["mma-serve"]["spec"]["template"]["spec"]["containers"][0]
    assert serve["args"] == ["serve"]
    assert serve["ports"][0]["containerPort"] == cluster_settings.publish.serve_port
    assert serve["livenessProbe"]["httpGet"]["path"] == "/health"


def test_secrets_come_from_secrets_never_from_the_configmap(cluster_settings):
    from pydantic import BaseModel, SecretStr

    def secrets(model: BaseModel, path: str = ""):
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, SecretStr):
                yield path + name
            elif isinstance(value, BaseModel):
                yield from secrets(value, f"{path}{name}.")
            elif isinstance(value, list):
                for i, v in enumerate(value):
                    if isinstance(v, BaseModel):
                        yield from secrets(v, f"{path}{name}[{i}].")

    assert list(secrets(cluster_settings)) == [], "a secret is set in the ConfigMap's preset"
    assert not any("password" in k or "secret" in k for k in cluster_settings.kafka.config)
    pods = {n: d["spec"]["template"] for n, d in by_kind("Deployment").items()}
    pods |= {n: c["spec"]["jobTemplate"]["spec"]["template"] for n, c in by_kind("CronJob").items()}
    for name, pod in pods.items():
        envs = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        for env in envs.values():
            if re.search(r"PASSWORD|SECRET|TOKEN", env["name"]):
                assert "secretKeyRef" in env.get("valueFrom", {}), (name, env["name"])
        db = envs["MMA_BROKER_ARCHIVE__DATABASE_URL"]["value"]
        assert db.startswith("postgresql+psycopg://$(MMA_DB_USER):$(MMA_DB_PASSWORD)@mma-archive-rw:"), name


def test_archive_gc_runs_nightly_and_keeps_dead_letters_bytes_as_long_as_mma_dlq(cluster_settings):
    (job,) = by_kind("CronJob").values()
    spec = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert spec["containers"][0]["args"] == ["archive", "gc"]
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    dlq = by_kind("KafkaTopic")[cluster_settings.topic(cluster_settings.dlq_topic)]
    # broker/config.py: keep gc_grace_hours at least the retention of mma.dlq
    assert cluster_settings.archive.gc_grace_hours * 3_600_000 >= dlq["spec"]["config"]["retention.ms"]
    assert not cluster_settings.kafka.retention_ms, "topic retention belongs to kafka/topics.yaml (Strimzi)"
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert env["MMA_DB_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mma-archive-app"


def acl_covers(user: dict, rtype: str, name: str, op: str) -> bool:
    for acl in user["spec"]["authorization"]["acls"]:
        r = acl["resource"]
        if r["type"] != rtype or op not in acl["operations"]:
            continue
        if rtype == "cluster":
            return True
        if r.get("patternType", "literal") == "prefix" and name.startswith(r["name"]) or r["name"] == name:
            return True
    return False


LANED = ("enrich", "filters")
"""The stages deploy/k8s runs as lanes ([lanes] of the preset, broker/lanes.py)."""


def test_each_stage_user_may_do_exactly_what_its_stage_does(cluster_settings):
    from broker.lanes import lanes_of

    users = by_kind("KafkaUser")
    used = topic_settings(cluster_settings)
    filter_topics = [v for k, v in used.items() if k.startswith("filters:")]
    group = cluster_settings.group_id
    for stage, dep in stage_deployments().items():
        env = container_env(dep)
        user = users[env["MMA_BROKER_KAFKA__CONFIG__SASL.USERNAME"]["value"]]
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        assert env["MMA_BROKER_KAFKA__CONFIG__SASL.PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": user["metadata"]["name"], "key": "password"}
        reads, writes = STAGE_IO[stage]
        for key in reads:
            assert acl_covers(user, "topic", used[key], "Read"), (stage, key)
        for key in writes:
            for topic in filter_topics if key == "filters:*" else [used[key]]:
                assert acl_covers(user, "topic", topic, "Write"), (stage, topic)
        # nothing more: a topic it may read or write is one of its own
        allowed_read = {used[k] for k in reads}
        allowed_write = {t for k in writes for t in (filter_topics if k == "filters:*" else [used[k]])}
        for topic in set(used.values()):
            assert acl_covers(user, "topic", topic, "Read") <= (topic in allowed_read | allowed_write), (stage, topic)
            assert acl_covers(user, "topic", topic, "Write") <= (topic in allowed_write), (stage, topic)
        loops = ([f"ingest.{up.name}" for up in cluster_settings.upstreams] if stage == "ingest"
                 else [f"{STAGE_LOOPS[stage]}.{lane.name}" for lane in lanes_of(cluster_settings)]
                 if stage in LANED else [STAGE_LOOPS[stage]] if STAGE_LOOPS[stage] else [])
        for loop in loops:
            assert acl_covers(user, "group", f"{group}.{loop}", "Read"), (stage, loop)
            assert acl_covers(user, "transactionalId", f"{group}.{loop}.mma-{stage}-5d8f7b9c4-x2x7q.0", "Write")
        if stage in LANED:  # the lanes' groups, not the group of the stage run as one loop
            assert not acl_covers(user, "group", f"{group}.{stage}", "Read"), stage
        assert acl_covers(user, "cluster", "", "IdempotentWrite"), stage


def test_keda_scales_each_consumer_stage_on_its_own_group_within_its_partitions(cluster_settings):
    topics = by_kind("KafkaTopic")
    scaled = by_kind("ScaledObject")
    deps = by_kind("Deployment")
    used = topic_settings(cluster_settings)
    from broker.lanes import lanes_of

    lanes = [lane.name for lane in lanes_of(cluster_settings)]
    targets = [(stage, loop, f"mma-{stage}") for stage, loop in STAGE_LOOPS.items()
               if stage not in LANED and stage != "ingest"]
    targets += [("ingest", None, "mma-ingest-optical")]  # the notices' ingest: one fixed replica
    assert not {"mma-ingest", "mma-ingest-notices"} & set(scaled)
    targets += [(stage, f"{STAGE_LOOPS[stage]}.{lane}", f"mma-{stage}-{lane}") for stage in LANED for lane in lanes]
    assert not {f"mma-{stage}" for stage in LANED} & set(scaled)
    for stage, loop, name in targets:
        if stage in ("publish",):
            assert f"mma-{stage}" not in scaled  # reads the outbox table, not Kafka
            continue
        so = scaled[name]
        assert so["spec"]["scaleTargetRef"]["name"] == name and name in deps
        assert "replicas" not in deps[name]["spec"], "KEDA owns the replicas: a re-apply would reset them"
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        if stage == "ingest":  # upstream lag: the ZTF loop's own group on ZTF's cluster
            ztf = next(up for up in cluster_settings.upstreams if up.kind == "ztf")
            assert meta["bootstrapServers"] == ztf.bootstrap_servers
            assert meta["consumerGroup"] == ztf.group_id
            continue
        assert meta["bootstrapServers"] == cluster_settings.kafka.bootstrap_servers
        assert meta["consumerGroup"] == f"{cluster_settings.group_id}.{loop}"
        assert trigger["authenticationRef"]["name"] in by_kind("TriggerAuthentication")
        inputs = [used[k] for k in STAGE_IO[stage][0]]
        if "topic" in meta:
            assert meta["topic"] in inputs
        ceiling = min(topics[t]["spec"]["partitions"] for t in inputs)
        assert so["spec"]["minReplicaCount"] >= 1
        assert so["spec"]["maxReplicaCount"] <= ceiling, (stage, ceiling)
    keda = by_kind("KafkaUser")["mma-keda"]
    for topic in used.values():
        assert acl_covers(keda, "topic", topic, "Describe") and not acl_covers(keda, "topic", topic, "Read")


# ------------------------------------------------------------------ dashboard

def exported_metric_names() -> set[str]:
    from broker.metrics import Metrics

    names = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"],
                    "gauge": [""], "info": ["_info"]}.get(family.type, [""])
        names |= {family.name + s for s in suffixes}
    return names


def dashboard_metrics(dashboard: dict) -> set[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return set(re.findall(r"\b((?:mma_broker|process|python)_[a-z_]+)\b", " ".join(exprs)))


def test_every_metric_in_the_dashboard_is_exported_by_the_code():
    dashboard = json.loads((K8S / "monitoring" / "mma-broker-dashboard.json").read_text())
    used = dashboard_metrics(dashboard)
    exported = exported_metric_names()
    assert "mma_broker_messages_in_total" in exported and "mma_broker_batch_seconds_bucket" in exported
    assert used - exported == set(), f"dashboard metrics broker/metrics.py does not export: {used - exported}"
    ours = {n for n in exported if n.startswith("mma_broker_") and not n.endswith("_created")}
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in ours}
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    assert families <= shown, f"metrics the dashboard does not show: {families - shown}"
    assert dashboard_metrics({"panels": [{"targets": [{"expr": "rate(mma_broker_gone_total[5m])"}]}],
                              "templating": {"list": []}}) - exported == {"mma_broker_gone_total"}


def test_the_podmonitor_scrapes_the_stage_pods_metrics_port():
    (pm,) = by_kind("PodMonitor").values()
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    labels = pm["spec"]["selector"]["matchLabels"]
    for dep in stage_deployments().values():
        assert labels.items() <= dep["spec"]["template"]["metadata"]["labels"].items()


# ------------------------------------------------------------------ compose

def compose_validator() -> jsonschema.Draft7Validator:
    schema = json.loads((COMPOSE / "schema" / "compose-spec.json").read_text())
    return jsonschema.Draft7Validator(schema)


def test_compose_file_is_valid_for_the_compose_spec_schema():
    doc = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in compose_validator().iter_errors(doc)]
    assert errors == []
    from broker import stages

    services = doc["services"]
    assert {"kafka", "postgres", "serve", *stages.registered()} == set(services)
    for name in stages.registered():
        assert services[name]["command"] == ["run", "--stage", name]
    assert "PASSWORD" not in json.dumps(doc["x-broker"]["environment"]).replace("MMA_DB_PASSWORD", "")


def test_compose_schema_refuses_a_broken_file():
    doc = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    bad = copy.deepcopy(doc)
    bad["services"]["enrich"]["restart_policy"] = "always"
    worse = copy.deepcopy(doc)
    worse["services"]["kafka"]["ports"] = "29092"
    for d in (bad, worse):
        assert list(compose_validator().iter_errors(d)), d["services"]


def test_compose_settings_load(monkeypatch):
    for key in list(os.environ):
        if key.startswith("MMA_BROKER_"):
            monkeypatch.delenv(key)
    from broker.config import load_settings

    s = load_settings(config_file=COMPOSE / "mma-broker.toml")
    assert s.kafka.bootstrap_servers == "kafka:9092" and s.archive.raw_store == "postgres"
    assert tomllib.loads((COMPOSE / "mma-broker.toml").read_text())["metrics"]["host"] == "0.0.0.0"
