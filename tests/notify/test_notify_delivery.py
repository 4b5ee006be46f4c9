"""Delivery against real servers: an SMTP server receives the e-bill, an SMS provider
checks signature and template, a WeChat API hands out tokens and template messages, a
webhook receiver verifies the HMAC. Evidence reaches billing's notice; dead contacts reach
the staff list; quiet hours, the per-contact limit and retries with backoff hold."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from notify_helpers import (
    Provider,
    customer_with_account,
    http_server,
    notice,
    sms_provider_app,
    smtp_server,
    webhook_receiver_app,
    wechat_app,
)

from billing import notices_of, undeliverable_contacts
from notify import NotifyConfig, NotifyService

pytestmark = pytest.mark.integration
NOON = datetime(2026, 12, 3, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai
NIGHT = datetime(2026, 12, 3, 15, 0, tzinfo=UTC)  # 23:00 in Shanghai
SMS_SECRET = "sms-secret-0123456789abcdef"
SMS_TEMPLATES = {
    "SMS_LOW_ZH": {"balance", "threshold"},
    "SMS_LOW_EN": {"balance", "threshold"},
    "SMS_BILL": {"account", "amount"},
}


def sms_table(url: str, secret: dict) -> dict[str, Any]:
    return {
        "url": f"{url}/v1/sms/send",
        "key_id": "key-1",
        "secret": secret,
        "sign_name": "Meterhub Power",
        "rate_per_s": 50,
        "templates": {
            "low_balance": {
                "code": {"zh-CN": "SMS_LOW_ZH", "en": "SMS_LOW_EN"},
                "params": {"balance": "{balance}", "threshold": "{threshold}"},
            },
            "bill": {"code": "SMS_BILL", "params": {"account": "{account}", "amount": "{amount}"}},
        },
    }


@contextlib.asynccontextmanager
async def sms_and_email(secret_file) -> AsyncIterator[tuple[Provider, Any, NotifyConfig, str]]:
    """An SMS provider and an SMTP server running, and a config with both channels."""
    sms = Provider()
    with smtp_server() as (box, port):
        async with http_server(
            sms_provider_app(sms, "key-1", SMS_SECRET.encode(), SMS_TEMPLATES)
        ) as url:
            config = NotifyConfig.from_dict(
                {
                    "sms": sms_table(url, secret_file("sms", SMS_SECRET)),
                    "email": {"host": "127.0.0.1", "port": port, "from": "b@meterhub.test"},
                }
            )
            yield sms, box, config, url


async def drain(service: NotifyService, rounds: int = 5) -> None:
    for _ in range(rounds):
        await service.pass_once()


def evidence(conn, notice_id: int) -> list[tuple]:
    return conn.execute(
        "SELECT channel, outcome, provider_ref FROM billing_notice_evidence "
        "WHERE notice_id = %s ORDER BY evidence_id",
        (notice_id,),
    ).fetchall()


async def test_ebill_arrives_by_smtp_in_the_customers_language(conn, db_url) -> None:
    account = customer_with_account(conn, language="en")
    nid = notice(conn, account, "bill", NOON, amount="123.45", due="2026-12-20")
    with smtp_server() as (box, port):
        config = NotifyConfig.from_dict(
            {
                "email": {
                    "host": "127.0.0.1",
                    "port": port,
                    "from": "Meterhub <billing@meterhub.test>",
                }
            }
        )
        async with NotifyService(config, db_url, clock=lambda: NOON) as service:
            await drain(service)
            await asyncio.sleep(0)
    [mail] = box.messages
    assert mail["To"] == "tenant1@example.com"
    assert mail["Subject"] == "bill notice"
    assert "123.45" in mail.get_content() and "do not reply" in mail.get_content()
    [(channel, outcome, ref)] = evidence(conn, nid)
    assert (channel, outcome, ref) == ("email", "delivered", mail["Message-ID"])
    assert notices_of(conn, account)[0].last_outcome == "delivered"
    assert service.stats.delivered == 1


async def test_sms_signed_with_template_and_dead_number_falls_back(
    conn, db_url, secret_file
) -> None:
    account = customer_with_account(conn, preferred_channel="sms", language="zh-CN")
    nid = notice(conn, account, "low_balance", NOON, balance="28.50", threshold="30.00")
    async with sms_and_email(secret_file) as (sms, box, config, url):
        async with NotifyService(config, db_url, clock=lambda: NOON) as service:
            await drain(service)
        [sent] = sms.received
        assert sent["to"] == "+8613800138001"
        assert (sent["template_code"], sent["params"]) == (
            "SMS_LOW_ZH",
            {"balance": "28.50", "threshold": "30.00"},
        )
        assert sent["sign_name"] == "Meterhub Power" and sms.refused == []
        assert evidence(conn, nid) == [("sms", "delivered", "sms-1")]

        # the next notice finds the number dead: listed for staff, e-mail takes over
        sms.answers.append((200, {"code": "UNKNOWN_SUBSCRIBER", "message": "no such"}))
        nid2 = notice(
            conn, account, "low_balance", NOON, key="second", balance="9.00", threshold="10.00"
        )
        async with NotifyService(config, db_url, clock=lambda: NOON) as service:
            await drain(service)
        assert [e[:2] for e in evidence(conn, nid2)] == [
            ("sms", "refused"),
            ("email", "delivered"),
        ]
        [dead] = undeliverable_contacts(conn)
        assert (dead.channel, dead.contact) == ("sms", "+8613800138001")
        assert "UNKNOWN_SUBSCRIBER" in dead.reason
        assert len(box.messages) == 1

        # a wrong key: the provider refuses the signature (401: not retried), never delivered
        bad = NotifyConfig.from_dict(
            {
                "sms": sms_table(url, secret_file("bad", "wrong")),
                "max_attempts": 2,
                "retry_backoff_s": 0.01,
            }
        )
        nid3 = notice(conn, "acc-1", "bill", NOON, key="third", amount="1.00")
        async with NotifyService(bad, db_url, clock=lambda: NOON) as service:
            await drain(service)
        assert sms.refused == ["signature"]
        assert all(o != "delivered" for _, o, _ in evidence(conn, nid3))


async def test_wechat_template_message_with_token_and_unfollowed_user(
    conn, db_url, secret_file
) -> None:
    account = customer_with_account(conn, preferred_channel="wechat", language="zh-CN")
    nid = notice(conn, account, "restore", NOON, balance="100.00")
    wx = Provider()
    async with http_server(wechat_app(wx, "wxappid01", "wx-secret")) as url:
        config = NotifyConfig.from_dict(
            {
                "wechat": {
                    "appid": "wxappid01",
                    "secret": secret_file("wx", "wx-secret"),
                    "api_base": url,
                    "templates": {
                        "restore": {
                            "template_id": {"zh-CN": "TPL_ZH", "en": "TPL_EN"},
                            "fields": {
                                "first": "{subject}",
                                "keyword1": "{balance}",
                                "remark": "{body}",
                            },
                        }
                    },
                }
            }
        )
        async with NotifyService(config, db_url, clock=lambda: NOON) as service:
            await drain(service)
            [msg] = wx.received
            assert msg["touser"] == "oOpenId_0001" and msg["template_id"] == "TPL_ZH"
            assert msg["data"]["first"] == {"value": "restore 通知"}
            assert msg["data"]["keyword1"] == {"value": "100.00"}
            assert evidence(conn, nid) == [("wechat", "delivered", "2001")]

            wx.answers.append((200, {"errcode": 43004, "errmsg": "require subscribe"}))
            nid2 = notice(conn, account, "restore", NOON, key="again", balance="1.00")
            await drain(service)
    assert [e[:2] for e in evidence(conn, nid2)] == [("wechat", "refused"), ("none", "failed")]
    assert [(u.channel, u.contact) for u in undeliverable_contacts(conn)] == [
        ("wechat", "oOpenId_0001")
    ]
    assert (
        conn.execute(
            "SELECT state, last_error FROM notify_jobs WHERE notice_id = %s", (nid2,)
        ).fetchone()[0]
        == "given_up"
    )


async def test_quiet_hours_hold_all_but_required_and_contact_limit(conn, db_url) -> None:
    account = customer_with_account(conn)
    now = [NIGHT]
    routine = notice(conn, account, "low_balance", NIGHT, balance="20", threshold="30")
    final = notice(conn, account, "final_notice", NIGHT, required=True, when="23:30")
    with smtp_server() as (box, port):
        config = NotifyConfig.from_dict(
            {
                "quiet_hours": "21:30-08:00",
                "per_contact_per_hour": 2,
                "email": {"host": "127.0.0.1", "port": port, "from": "b@meterhub.test"},
            }
        )
        async with NotifyService(config, db_url, clock=lambda: now[0]) as service:
            await drain(service)
            assert [m["Subject"] for m in box.messages] == ["final_notice notice"]
            assert evidence(conn, routine) == []
            [(later,)] = conn.execute(
                "SELECT next_attempt_at FROM notify_jobs WHERE notice_id = %s", (routine,)
            ).fetchall()
            assert later == datetime(2026, 12, 4, 0, 0, tzinfo=UTC)  # 08:00 local
            now[0] = later
            more = [
                notice(conn, account, "low_balance", later, key=f"k{i}", balance="1", threshold="2")
                for i in range(2)
            ]
            await drain(service)
    # 08:00: three routine notices are due at once; the limit of 2 an hour sends two (which
    # two is not specified) and holds the third until an hour after the first of them
    assert len(box.messages) == 3
    sent = [n for n in (routine, *more) if evidence(conn, n)]
    assert len(sent) == 2 and all(evidence(conn, n)[0][1] == "delivered" for n in sent)
    [held] = {routine, *more} - set(sent)
    [(next_at,)] = conn.execute(
        "SELECT next_attempt_at FROM notify_jobs WHERE notice_id = %s", (held,)
    ).fetchall()
    assert next_at == later + timedelta(hours=1)
    assert evidence(conn, final)[0][1] == "delivered"


async def test_webhook_signed_retried_with_backoff(conn, db_url, secret_file) -> None:
    account = customer_with_account(conn)
    nid = notice(conn, account, "cutoff", NOON, required=True, time="12:30")
    notice(conn, account, "low_balance", NOON, balance="1", threshold="2")  # not subscribed
    hook = Provider()
    hook.answers += [(503, {"error": "busy"}), (500, {"error": "oops"})]
    async with http_server(webhook_receiver_app(hook, b"hook-secret-0123")) as url:
        config = NotifyConfig.from_dict(
            {
                "retry_backoff_s": 0.05,
                "webhooks": [
                    {
                        "name": "pms",
                        "url": f"{url}/hook",
                        "secret": secret_file("hook", "hook-secret-0123"),
                        "kinds": ["cutoff", "final_notice"],
                    }
                ],
            }
        )
        async with NotifyService(config, db_url) as service:
            for _ in range(40):
                await service.pass_once()
                if hook.received:
                    break
                await asyncio.sleep(0.05)
    [event] = hook.received
    assert event["event"] == f"{nid}:pms" and event["kind"] == "cutoff"
    assert event["params"] == {"time": "12:30"} and event["account_id"] == account
    assert hook.refused == []
    attempts = conn.execute(
        "SELECT outcome FROM notify_attempts WHERE target = 'webhook:pms' ORDER BY attempt_id"
    ).fetchall()
    assert attempts == [("retry",), ("retry",), ("ok",)]
    times = [
        r[0]
        for r in conn.execute(
            "SELECT at FROM notify_attempts WHERE target = 'webhook:pms' ORDER BY attempt_id"
        )
    ]
    # the backoff doubles: at least 0.05 s before the second try, 0.1 s before the third
    assert times[1] - times[0] >= timedelta(seconds=0.05)
    assert times[2] - times[1] >= timedelta(seconds=0.1)
    assert ("webhook", "sent") in [e[:2] for e in evidence(conn, nid)]


async def test_withdrawn_notice_is_not_sent(conn, db_url) -> None:
    from billing.notices import withdraw

    account = customer_with_account(conn)
    nid = notice(conn, account, "reminder", NIGHT, due="x")
    with smtp_server() as (box, port):
        config = NotifyConfig.from_dict(
            {
                "quiet_hours": "21:30-08:00",
                "email": {"host": "127.0.0.1", "port": port, "from": "b@meterhub.test"},
            }
        )
        now = [NIGHT]
        async with NotifyService(config, db_url, clock=lambda: now[0]) as service:
            await drain(service)  # deferred by the quiet hours
            withdraw(conn, account, ["reminder"], at=NIGHT + timedelta(hours=1))
            now[0] = NIGHT + timedelta(hours=10)
            await drain(service)
    assert box.messages == []
    assert conn.execute(
        "SELECT state FROM notify_jobs WHERE notice_id = %s", (nid,)
    ).fetchone() == ("done",)


async def test_refused_mailbox_is_listed_and_next_channel_tried(conn, db_url, secret_file) -> None:
    account = customer_with_account(conn, preferred_channel="email")
    nid = notice(conn, account, "bill", NOON, amount="5.00")
    async with sms_and_email(secret_file) as (sms, box, config, _):
        box.refused.add("tenant1@example.com")
        async with NotifyService(config, db_url, clock=lambda: NOON) as service:
            await drain(service)
    assert box.messages == []
    assert [e[:2] for e in evidence(conn, nid)] == [("email", "refused"), ("sms", "delivered")]
    assert sms.received[0]["params"] == {"account": account, "amount": "5.00"}
    [dead] = undeliverable_contacts(conn)
    assert (dead.channel, dead.contact) == ("email", "tenant1@example.com")


def test_example_configs_load(monkeypatch) -> None:
    from pathlib import Path

    from billing.payment_http import PaymentsConfig

    for name in (
        "METERHUB_SMTP_PASSWORD",
        "METERHUB_SMS_SECRET",
        "METERHUB_WECHAT_SECRET",
        "METERHUB_PMS_WEBHOOK_SECRET",
        "METERHUB_ACMEPAY_SECRET",
    ):
        monkeypatch.setenv(name, "example-secret")
    configs = Path(__file__).parents[2] / "configs"
    notify = NotifyConfig.load(configs / "notify.example.toml")
    assert notify.sms is not None and set(notify.sms.templates) == {"low_balance", "restore"}
    assert [w.name for w in notify.webhooks] == ["pms"]
    assert set(PaymentsConfig.load(configs / "payments.example.toml").providers) == {"acmepay"}


def test_notify_run_command_delivers_and_stops_on_sigterm(conn, db_url, tmp_path) -> None:
    import json
    import signal
    import subprocess
    import sys
    import time

    account = customer_with_account(conn)
    notice(conn, account, "bill", NOON, amount="9.99")
    with smtp_server() as (box, port):
        cfg = tmp_path / "notify.toml"
        cfg.write_text(f'[email]\nhost = "127.0.0.1"\nport = {port}\nfrom = "b@meterhub.test"\n')
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "launcher.cli",
                "notify",
                "--database-url",
                db_url,
                "run",
                "--config",
                str(cfg),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not box.messages and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert [m["Subject"] for m in box.messages] == ["bill notice"]
    assert json.loads(out.strip().splitlines()[-1])["delivered"] == 1
