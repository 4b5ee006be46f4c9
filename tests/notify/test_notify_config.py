"""notify.toml checks (every problem named at once), quiet hours (property tests) and
template placeholders."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notify import NotifyConfig, NotifyConfigError, QuietHours
from notify.channels.base import Message
from notify.templates import SMS_KEYS, WECHAT_KEYS, ProviderTemplate, TemplateError, placeholders

SHANGHAI = ZoneInfo("Asia/Shanghai")


@settings(deadline=None)  # timing is not the property; CI is loaded
@given(
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    st.times(),
    st.times(),
)
def test_quiet_hours_end_is_outside_and_within_a_day(at: datetime, start: time, end: time) -> None:
    start, end = start.replace(second=0, microsecond=0), end.replace(second=0, microsecond=0)
    if start == end:
        return
    quiet = QuietHours(start, end, SHANGHAI)
    out = quiet.ends_after(at)
    assert out >= at and not quiet.contains(out)
    assert out - at <= timedelta(days=1)
    if not quiet.contains(at):
        assert out == at


def test_quiet_hours_over_midnight() -> None:
    quiet = QuietHours(time(21, 30), time(8), SHANGHAI)
    local = datetime(2026, 12, 3, 23, 0, tzinfo=SHANGHAI)
    assert quiet.contains(local) and quiet.ends_after(local) == datetime(
        2026, 12, 4, 8, 0, tzinfo=SHANGHAI
    )
    assert not quiet.contains(datetime(2026, 12, 4, 8, 0, tzinfo=SHANGHAI))


def test_every_problem_is_named_at_once(tmp_path) -> None:
    with pytest.raises(NotifyConfigError) as err:
        NotifyConfig.from_dict(
            {
                "quiet_hours": "22:00",
                "timezone": "Mars/Olympus",
                "colour": "blue",
                "max_attempts": 0,
                "wechat": {
                    "appid": "wx",
                    "secret": {"file": str(tmp_path / "missing")},
                    "templates": {"bill": {"template_id": "T", "fields": {"first": "{amount!r}"}}},
                },
                "webhooks": [{"name": "Bad Name", "url": "https://x/h", "secret": {"env": "NOPE"}}],
            }
        )
    text = str(err.value)
    for key in (
        "quiet_hours",
        "timezone",
        "colour: unknown key",
        "max_attempts",
        "wechat.secret",
        "wechat.templates.bill.fields.first",
        "webhooks[0].name",
        "webhooks[0].secret",
    ):
        assert key in text, key


def test_placeholders_and_rendering() -> None:
    assert placeholders("{balance} of {account} {{literal}}", "k") == {"balance", "account"}
    for bad in ("{0}", "{a.b}", "{a[0]}", "{a:>10}", "{a!s}", "{unclosed"):
        with pytest.raises(TemplateError, match="k"):
            placeholders(bad, "k")
    message = Message(7, "acc-1", "bill", False, "en", "Your bill", "body", {"amount": "12.30"})
    sms = ProviderTemplate.from_dict(
        {
            "code": {"zh-CN": "Z", "en": "E"},
            "params": {"amt": "{amount} yuan", "acct": "{account}"},
        },
        "k",
        SMS_KEYS,
    )
    assert sms.render(message, "k") == ("E", {"amt": "12.30 yuan", "acct": "acc-1"})
    wx = ProviderTemplate.from_dict(
        {"template_id": "T", "fields": {"x": "{due}"}}, "w", WECHAT_KEYS
    )
    with pytest.raises(TemplateError, match=r"w.fields.x: the bill notice has no parameter due"):
        wx.render(message, "w")
