"""Alert decoders are plugins (entry-point group ``mma_broker.sources``): the built-in
ones register like any other, keep the order the dispatcher always had, load once,
and a broken or buggy plugin neither stops decoding nor escapes as anything but a
DecodeError. Real alerts, decoded through the production dispatcher."""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint

import pytest

from broker import plugins
from broker.errors import DecodeError
from broker.sources import decode, decoders, upstream_topic
from broker.sources.decoder import AlertDecoder
from tests.conftest import ROOT

DATA = ROOT / "tests" / "data"
IGWN_JSON = DATA / "igwn" / "userguide" / "MS181101ab-initial.json"
IGWN_AVRO = DATA / "igwn" / "userguide" / "MS181101ab-preliminary.avro"
GCN_JSON = DATA / "gcn" / "gcn-schema" / "gcn" / "notices" / "swift" / "bat" / "guano.loc_arc_min.example.json"
VOEVENT = DATA / "voevent" / "pygcn" / "gbm_flt_pos.xml"
ZTF = DATA / "ztf" / "fink-client" / "avro_multi_alerts_other.avro"
HOP_JSON = DATA / "hermes" / "hop-client" / "example_json.json"


def _boom(data, parsed):
    raise ZeroDivisionError("a decoder bug")


BUGGY = AlertDecoder(name="buggy", format="json", accepts=lambda obj: "superevent_id" in obj, decode=_boom,
                     upstream_topic=lambda data, obj: "buggy.topic", priority=1, describes="a buggy thing")
"""A plugin that takes IGWN JSON before the built-in decoder and fails on it."""

NOT_A_DECODER = object()


@pytest.fixture
def extra_sources(monkeypatch):
    """Register extra entry points of ``mma_broker.sources`` beside the installed ones."""
    real = plugins.available(plugins.SOURCES)

    def register(**extra: str) -> None:
        eps = {name: EntryPoint(name, value, plugins.SOURCES) for name, value in extra.items()}
        monkeypatch.setattr(plugins, "available", lambda group: {**real, **eps} if group == plugins.SOURCES
                            else plugins.available.__wrapped__(group))
        decoders.cache_clear()

    yield register
    decoders.cache_clear()


def test_builtin_decoders_are_registered_in_the_dispatch_order():
    assert {"ztf", "igwn.avro", "igwn.json", "gcn", "voevent"} <= set(plugins.available(plugins.SOURCES))
    names = {fmt: [d.name for d in found] for fmt, found in decoders().items()}
    assert names == {"avro": ["ztf", "igwn.avro", "lsst"], "json": ["igwn.json", "gcn"], "voevent": ["voevent"]}


@pytest.mark.parametrize("path, source", [(IGWN_JSON, "igwn"), (IGWN_AVRO, "igwn"), (GCN_JSON, "gcn"),
                                          (VOEVENT, "gcn"), (ZTF, "ztf")])
def test_each_builtin_decoder_decodes_its_real_alert(path, source):
    events = decode(path.read_bytes())
    assert events and {ev.source for ev in events} == {source}


def test_decoders_load_once(monkeypatch):
    decoders()  # warm
    calls = []
    monkeypatch.setattr(plugins, "load", lambda *a: calls.append(a))
    for path in (IGWN_JSON, GCN_JSON, VOEVENT, ZTF) * 3:
        decode(path.read_bytes())
    assert calls == [] and decoders() is decoders()


def test_no_decoder_taking_json_names_what_the_decoders_take():
    with pytest.raises(DecodeError, match=r"^JSON is neither an IGWN gwalert \(no 'superevent_id'\) nor a GCN "
                                          r"unified-schema notice \(no '\$schema'\)$"):
        decode(HOP_JSON.read_bytes())


def test_broken_plugins_are_left_out_with_a_warning(extra_sources, caplog):
    extra_sources(missing="no_such_module_zz:DECODER", wrong="tests.unit.test_source_plugins:NOT_A_DECODER")
    with caplog.at_level(logging.WARNING, logger="broker.sources"):
        assert [ev.source for ev in decode(GCN_JSON.read_bytes())] == ["gcn"]
    assert "'missing'" in caplog.text and "no_such_module_zz" in caplog.text
    assert "'wrong'" in caplog.text and "not an AlertDecoder" in caplog.text


def test_a_plugin_of_higher_priority_goes_first_and_its_bug_is_a_decode_error(extra_sources):
    extra_sources(buggy="tests.unit.test_source_plugins:BUGGY")
    assert [d.name for d in decoders()["json"]] == ["buggy", "igwn.json", "gcn"]
    with pytest.raises(DecodeError, match=r"^decoder failed: ZeroDivisionError: a decoder bug$"):
        decode(IGWN_JSON.read_bytes())
    assert upstream_topic(IGWN_JSON.read_bytes()) == "buggy.topic"
    assert [ev.source for ev in decode(GCN_JSON.read_bytes())] == ["gcn"]  # not taken by the plugin
