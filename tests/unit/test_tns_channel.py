"""The ``tns`` channel (broker/sinks/tns.py) against a local server speaking TNS's protocol.

tests/tnsserver.py is a real HTTP server on a free port (http.server in a thread):
bulk-report, bulk-report-reply (pending 404, accepted 100/101, rejected 400 with
feedback), 429 with reset headers, slow replies. The report sent is the real one of
ZTF20aalseuk (tests/unit/test_tns_report.py).
"""

from __future__ import annotations

import copy
import json
import logging

import pytest
from pydantic import SecretStr

from broker.sinks.channels import Channel, ChannelError
from broker.sinks.config import PublishSettings, TnsSettings
from broker.sinks.outbox import OutboxEntry
from broker.sinks.tns import TnsChannel, TnsRateLimited, object_names, retry_after, tns_channel, tns_marker
from followup.reports.tns import tns_report
from tests.tnsserver import TnsServer
from tests.unit.test_tns_report import NEW, SETTINGS, counterpart, record

KEY = "b0t-k3y-7f3a9c21d4e5"
BOT = dict(api_key=KEY, bot_id=123456, bot_name="mma_broker_bot")


@pytest.fixture(scope="module")
def payload() -> dict:
    return tns_report(record(NEW), counterpart(NEW)[1], SETTINGS)


def settings(server: TnsServer, **kw) -> TnsSettings:
    return TnsSettings(enabled=True, base_url=server.base_url, api_key=SecretStr(kw.pop("api_key", KEY)),
                       bot_id=kw.pop("bot_id", BOT["bot_id"]), bot_name=BOT["bot_name"], **{"timeout_s": 2.0, **kw})


def entry(payload: dict, receipt: dict | None = None, id_: int = 7) -> OutboxEntry:
    return OutboxEntry(id=id_, key=f"tns:ztf:ZTF20aalseuk:{id_}", channel="tns", payload=payload,
                       state="sending" if receipt is None else "sent", receipt=receipt)


def send_and_poll(ch: TnsChannel, e: OutboxEntry, polls: int = 5) -> tuple[dict, list[dict | None]]:
    receipt = ch.send(e)
    seen = []
    for _ in range(polls):
        got = ch.poll(entry(e.payload, receipt, e.id))
        seen.append(got)
        if got is not None:
            return got, seen
    return receipt, seen


def test_accepted_report_keeps_the_object_name(payload):
    with TnsServer(**BOT, pending_polls=2) as tns:
        ch = TnsChannel(settings(tns))
        assert isinstance(ch, Channel)
        receipt = ch.send(entry(payload))
        assert receipt["pending"] is True and receipt["status"] == "pending" and receipt["report_id"] == "100000"
        # two polls while TNS has not processed it (404): unchanged
        assert ch.poll(entry(payload, receipt)) is None and ch.poll(entry(payload, receipt)) is None
        final = ch.poll(entry(payload, receipt))
        assert final["status"] == "accepted" and final["pending"] is False
        assert final["object_name"] == "2020aaa" and final["new_object"] is True
        assert final["feedback"]["at_report"][0]["100"]["objname"] == "2020aaa"
        assert ch.poll(entry(payload, final)) is None  # nothing pending any more
        # what TNS received: the form fields and the bot marker
        sent = tns.state.requests[0]
        assert sent.path == "/api/bulk-report" and json.loads(sent.form["data"]) == payload
        assert sent.form["api_key"] == KEY
        assert sent.headers["User-Agent"] == 'tns_marker{"tns_id": 123456, "type": "bot", "name": "mma_broker_bot"}'
        assert {r.form.get("report_id") for r in tns.state.requests[1:]} == {"100000"}
        # the same object reported again: 101, the existing name, not a new object
        again, _ = send_and_poll(ch, entry(payload, id_=8))
        assert again["status"] == "accepted" and again["object_name"] == "2020aaa" and again["new_object"] is False
        assert tns.state.reports_received() == 2
        ch.close()


def test_rejected_report_keeps_the_feedback(payload):
    bad = copy.deepcopy(payload)
    bad["at_report"]["0"]["reporting_group_id"] = "999"  # a group this TNS does not know
    with TnsServer(**BOT, pending_polls=0) as tns:
        ch = TnsChannel(settings(tns))
        final, _ = send_and_poll(ch, entry(bad))
        assert final["status"] == "rejected" and final["pending"] is False and "object_name" not in final
        assert final["id_code"] == 400 and final["id_message"] == "Bad request"
        assert final["feedback"] == {"at_report": [{"0": [{"reporting_group_id": {
            "value": "999", "message": "Unknown reporting_group_id", "message_id": 400}}]}]}
        assert json.loads(json.dumps(final)) == final  # JSON-ready for the outbox


def test_rate_limit_is_retryable_with_the_reset_time(payload):
    with TnsServer(**BOT, pending_polls=0, rate_limit_next=1, rate_limit_reset_s=17) as tns:
        ch = TnsChannel(settings(tns))
        with pytest.raises(TnsRateLimited) as err:
            ch.send(entry(payload))
        assert err.value.retryable is True and err.value.retry_after_s == 17.0 and "17 s" in str(err.value)
        receipt = ch.send(entry(payload))  # the budget is back
        tns.state.rate_limit_next = 1
        with pytest.raises(TnsRateLimited) as err:
            ch.poll(entry(payload, receipt))
        assert err.value.retryable and err.value.retry_after_s == 17.0
        assert ch.poll(entry(payload, receipt))["status"] == "accepted"
        assert tns.state.reports_received() == 2  # the 429 one was refused, one queued


def test_slow_replies(payload):
    """A slow reply to a poll is retryable (polling is read-only); a slow answer to the
    report itself is not: TNS may have queued it, and sending again would report twice."""
    with TnsServer(**BOT, pending_polls=0) as tns:
        ch = TnsChannel(settings(tns, timeout_s=0.3))
        receipt = ch.send(entry(payload))
        tns.state.delay_s["bulk-report-reply"] = 1.0
        with pytest.raises(ChannelError) as err:
            ch.poll(entry(payload, receipt))
        assert err.value.retryable is True and "no reply" in str(err.value)
        tns.state.delay_s.clear()
        assert ch.poll(entry(payload, receipt))["status"] == "accepted"
        tns.state.delay_s["bulk-report"] = 1.0
        with pytest.raises(ChannelError) as err:
            ch.send(entry(payload, id_=9))
        assert err.value.retryable is False and "may have been received" in str(err.value)
        assert tns.state.reports_received() == 2  # it did arrive


def test_refusals_are_not_retryable_and_never_show_the_key(payload, caplog):
    caplog.set_level(logging.DEBUG)
    with TnsServer(**BOT) as tns:
        wrong = TnsChannel(settings(tns, api_key="not-the-key-0000"))
        with pytest.raises(ChannelError) as err:
            wrong.send(entry(payload))
        assert err.value.retryable is False and "401 Unauthorized" in str(err.value)
        other_bot = TnsChannel(settings(tns, bot_id=99))
        with pytest.raises(ChannelError, match="403 Forbidden") as err:
            other_bot.send(entry(payload))
        assert err.value.retryable is False
        with pytest.raises(ChannelError, match=r"\$.at_report.0.ra.value") as err:
            TnsChannel(settings(tns)).send(entry({"at_report": {"0": {**payload["at_report"]["0"], "ra": {}}}}))
        assert err.value.retryable is False and tns.state.reports_received() == 2  # the invalid one never left
        ch = TnsChannel(settings(tns))
        ch.send(entry(payload))
        with pytest.raises(ChannelError) as err:
            ch.recover(entry(payload))
        assert err.value.retryable is False and "outbox retry 7" in str(err.value)
        texts = [str(e) for e in (err.value,)] + [repr(ch), caplog.text]
    assert caplog.text  # httpx and the channel did log
    assert all(KEY not in t and "not-the-key-0000" not in t for t in texts)


def test_unreachable_is_retryable(payload):
    with TnsServer(**BOT) as tns:
        s = settings(tns)
    with pytest.raises(ChannelError, match="cannot reach") as err:  # the server is gone
        TnsChannel(s).send(entry(payload))
    assert err.value.retryable is True


def test_factory_settings_and_helpers():
    assert tns_channel(PublishSettings()) is None  # off by default
    assert TnsSettings().base_url == "https://sandbox.wis-tns.org/api"  # the sandbox by default
    with pytest.raises(ValueError, match=r"publish.tns.api_key, publish.tns.bot_id, publish.tns.bot_name"):
        tns_channel(PublishSettings(tns=TnsSettings(enabled=True)))
    ch = tns_channel(PublishSettings(tns=TnsSettings(enabled=True, api_key=SecretStr(KEY), bot_id=5, bot_name="b")))
    assert ch.name == "tns" and KEY not in repr(ch)
    assert tns_marker(5, "b") == 'tns_marker{"tns_id": 5, "type": "bot", "name": "b"}'
    assert retry_after({"X-Cone-Rate-Limit-Remaining": "0", "X-Cone-Rate-Limit-Reset": "42",
                        "x-rate-limit-reset": "3"}) == 42.0
    assert retry_after({"x-rate-limit-remaining": "5", "x-rate-limit-reset": "3"}) == 3.0
    assert retry_after({"Retry-After": "7"}) == 7.0 and retry_after({}) is None
    assert object_names({"at_report": [{"100": {"objname": "2024abc"}}, {"101": {"objname": "2023xyz"}},
                                       {"ra": {"message": "bad"}}]}) == [("2024abc", True), ("2023xyz", False)]


def test_built_by_name_from_the_root_settings(payload):
    """The sender gets the channel from broker.sinks.build (entry point mma_broker.channels ``tns``),
    and the reports stage hands the builder the root settings."""
    from types import SimpleNamespace

    from broker.sinks.build import build_channels

    with TnsServer(**BOT, pending_polls=0) as tns:
        root = SimpleNamespace(publish=PublishSettings(tns=settings(tns)))
        (ch,) = build_channels(root, names=["tns"]).values()
        assert isinstance(ch, TnsChannel) and ch.poll_interval_s == 30.0
        rep = tns_report(record(NEW), None, SimpleNamespace(publish=PublishSettings(tns=TnsSettings(**SETTINGS))))
        final, _ = send_and_poll(ch, entry(rep))
        assert final["status"] == "accepted"
    assert build_channels(SimpleNamespace(publish=PublishSettings()), names=["tns"]) == {}  # off by default
