"""``notify.toml``: channels, templates, quiet hours, rate limits and retries.

Every problem in the file is reported at once, each naming its key; secrets (SMTP password,
SMS and WeChat secrets, webhook secrets) are ``{file = ...}`` (mode 0600) or ``{env = ...}``,
never inline, never logged.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from meterhub.security.secrets import Secret, SecretError, load_secret
from notify.channels.email import EmailSettings
from notify.channels.sms import SmsSettings
from notify.channels.webhook import WebhookTarget
from notify.channels.wechat import WechatSettings
from notify.templates import SMS_KEYS, WECHAT_KEYS, ProviderTemplate, TemplateError

_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
T = TypeVar("T")


class NotifyConfigError(ValueError):
    """Everything wrong with the config, one problem per line."""


@dataclass(frozen=True)
class QuietHours:
    """Local hours in which only required notices go out (``start`` may be after ``end``:
    the window then spans midnight)."""

    start: time
    end: time
    tz: ZoneInfo

    def contains(self, at: datetime) -> bool:
        local = at.astimezone(self.tz).time()
        if self.start <= self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def ends_after(self, at: datetime) -> datetime:
        """The first moment after ``at`` outside the window (``at`` itself when outside)."""
        if not self.contains(at):
            return at
        local = at.astimezone(self.tz)
        end = datetime.combine(local.date(), self.end, self.tz)
        if end <= local:
            end = datetime.combine(local.date() + timedelta(days=1), self.end, self.tz)
        return end


@dataclass(frozen=True)
class NotifyConfig:
    quiet: QuietHours | None = None
    per_contact_per_hour: int = 4  # non-required messages to one contact in an hour
    max_attempts: int = 5  # per channel, for errors worth retrying
    retry_backoff_s: float = 30.0  # doubled per attempt, at most an hour
    batch: int = 100
    poll_s: float = 2.0
    lease_s: float = 120.0  # a job a crashed deliverer held is retried after this
    email: EmailSettings | None = None
    sms: SmsSettings | None = None
    wechat: WechatSettings | None = None
    webhooks: tuple[WebhookTarget, ...] = ()
    rates: Mapping[str, float] = field(default_factory=dict)  # channel -> sends a second

    @classmethod
    def load(cls, path: Path) -> NotifyConfig:
        try:
            doc = tomllib.loads(path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise NotifyConfigError(f"{path}: {exc}") from None
        return cls.from_dict(doc, base_dir=path.parent, source=str(path))

    @classmethod
    def from_dict(
        cls, doc: Mapping[str, Any], *, base_dir: Path | None = None, source: str = "notify"
    ) -> NotifyConfig:
        return _Reader(doc, base_dir, source).config()


class _Reader:
    """Reads the document, collecting problems instead of stopping at the first."""

    def __init__(self, doc: Mapping[str, Any], base_dir: Path | None, source: str) -> None:
        self.doc, self.base_dir, self.source = doc, base_dir, source
        self.problems: list[str] = []

    def fail(self, key: str, why: str) -> None:
        self.problems.append(f"{self.source}: {key}: {why}")

    def get(
        self,
        table: Mapping[str, Any],
        key: str,
        path: str,
        check: Callable[[Any], bool],
        why: str,
        default: T,
    ) -> T:
        if key not in table:
            return default
        value = table[key]
        if not check(value):
            self.fail(path, why)
            return default
        return value  # type: ignore[no-any-return]

    def number(
        self, table: Mapping[str, Any], key: str, path: str, default: float, low: float, high: float
    ) -> float:
        return float(
            self.get(
                table,
                key,
                path,
                lambda v: (
                    not isinstance(v, bool) and isinstance(v, int | float) and low <= v <= high
                ),
                f"a number from {low:g} to {high:g}",
                default,
            )
        )

    def text(self, table: Mapping[str, Any], key: str, path: str, default: str = "") -> str:
        value = self.get(
            table,
            key,
            path,
            lambda v: isinstance(v, str) and v.strip() != "",
            "non-empty text",
            default,
        )
        if not value and key not in table and not default:
            self.fail(path, "required")
        return value

    def secret(self, table: Mapping[str, Any], key: str, path: str) -> Secret | None:
        if key not in table:
            self.fail(path, 'required ({file = "PATH"} or {env = "NAME"})')
            return None
        try:
            value = load_secret(path, table[key], base_dir=self.base_dir)
        except SecretError as exc:
            self.problems.append(f"{self.source}: {exc}")
            return None
        if value.inline:
            self.fail(path, "give it as {file = ...} or {env = ...}, not inline")
            return None
        return value

    def table(self, key: str) -> Mapping[str, Any] | None:
        value = self.doc.get(key)
        if value is not None and not isinstance(value, Mapping):
            self.fail(key, "must be a table")
            return None
        return value

    def config(self) -> NotifyConfig:
        d = self.doc
        known = {
            "timezone",
            "quiet_hours",
            "per_contact_per_hour",
            "max_attempts",
            "retry_backoff_s",
            "batch",
            "poll_s",
            "lease_s",
            "email",
            "sms",
            "wechat",
            "webhooks",
        }
        for key in sorted(set(d) - known):
            self.fail(key, "unknown key")
        rates: dict[str, float] = {}
        config = NotifyConfig(
            quiet=self.quiet(),
            per_contact_per_hour=int(
                self.number(d, "per_contact_per_hour", "per_contact_per_hour", 4, 1, 1000)
            ),
            max_attempts=int(self.number(d, "max_attempts", "max_attempts", 5, 1, 100)),
            retry_backoff_s=self.number(d, "retry_backoff_s", "retry_backoff_s", 30, 0.01, 3600),
            batch=int(self.number(d, "batch", "batch", 100, 1, 1000)),
            poll_s=self.number(d, "poll_s", "poll_s", 2, 0.05, 600),
            lease_s=self.number(d, "lease_s", "lease_s", 120, 1, 3600),
            email=self.email(rates),
            sms=self.sms(rates),
            wechat=self.wechat(rates),
            webhooks=self.webhooks(),
            rates=rates,
        )
        if self.problems:
            raise NotifyConfigError("\n".join(self.problems))
        return config

    def quiet(self) -> QuietHours | None:
        name = self.get(
            self.doc,
            "timezone",
            "timezone",
            lambda v: isinstance(v, str),
            "an IANA zone like Asia/Shanghai",
            "Asia/Shanghai",
        )
        try:
            tz = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            self.fail("timezone", f"{name!r} is not a known time zone")
            tz = ZoneInfo("Asia/Shanghai")
        spec = self.doc.get("quiet_hours")
        if spec is None:
            return None
        parts = spec.split("-") if isinstance(spec, str) else []
        matches = [_HHMM.fullmatch(p.strip()) for p in parts]
        if len(parts) != 2 or not all(matches) or parts[0].strip() == parts[1].strip():
            self.fail("quiet_hours", 'local "HH:MM-HH:MM", like "21:30-08:00"')
            return None
        start, end = (time(int(m[1]), int(m[2])) for m in matches if m)
        return QuietHours(start, end, tz)

    def rate(self, table: Mapping[str, Any], channel: str, rates: dict[str, float]) -> None:
        rates[channel] = self.number(table, "rate_per_s", f"{channel}.rate_per_s", 10, 0.01, 10_000)

    def email(self, rates: dict[str, float]) -> EmailSettings | None:
        t = self.table("email")
        if t is None:
            return None
        self.rate(t, "email", rates)
        user = self.get(t, "username", "email.username", lambda v: isinstance(v, str), "text", None)
        password = self.secret(t, "password", "email.password") if user else None
        return EmailSettings(
            host=self.text(t, "host", "email.host"),
            port=int(self.number(t, "port", "email.port", 25, 1, 65535)),
            sender=self.text(t, "from", "email.from"),
            username=user,
            password=password,
            starttls=bool(
                self.get(
                    t,
                    "starttls",
                    "email.starttls",
                    lambda v: isinstance(v, bool),
                    "true or false",
                    False,
                )
            ),
            tls=bool(
                self.get(
                    t, "tls", "email.tls", lambda v: isinstance(v, bool), "true or false", False
                )
            ),
            timeout_s=self.number(t, "timeout_s", "email.timeout_s", 20, 1, 300),
        )

    def templates(
        self, t: Mapping[str, Any], channel: str, keys: tuple[str, str]
    ) -> dict[str, ProviderTemplate]:
        raw = t.get("templates", {})
        out: dict[str, ProviderTemplate] = {}
        if not isinstance(raw, Mapping):
            self.fail(f"{channel}.templates", "a table per notice kind")
            return out
        for kind, spec in raw.items():
            try:
                out[kind] = ProviderTemplate.from_dict(spec, f"{channel}.templates.{kind}", keys)
            except TemplateError as exc:
                self.problems.append(f"{self.source}: {exc}")
        return out

    def sms(self, rates: dict[str, float]) -> SmsSettings | None:
        t = self.table("sms")
        if t is None:
            return None
        self.rate(t, "sms", rates)
        secret = self.secret(t, "secret", "sms.secret")
        settings = SmsSettings(
            url=self.url(t, "sms.url"),
            key_id=self.text(t, "key_id", "sms.key_id"),
            secret=secret or Secret("", "missing"),
            sign_name=self.text(t, "sign_name", "sms.sign_name"),
            templates=self.templates(t, "sms", SMS_KEYS),
            timeout_s=self.number(t, "timeout_s", "sms.timeout_s", 15, 1, 300),
        )
        return settings

    def wechat(self, rates: dict[str, float]) -> WechatSettings | None:
        t = self.table("wechat")
        if t is None:
            return None
        self.rate(t, "wechat", rates)
        secret = self.secret(t, "secret", "wechat.secret")
        return WechatSettings(
            appid=self.text(t, "appid", "wechat.appid"),
            secret=secret or Secret("", "missing"),
            api_base=self.url(t, "wechat.api_base", "https://api.weixin.qq.com"),
            templates=self.templates(t, "wechat", WECHAT_KEYS),
            timeout_s=self.number(t, "timeout_s", "wechat.timeout_s", 15, 1, 300),
        )

    def url(self, t: Mapping[str, Any], path: str, default: str = "") -> str:
        key = path.rpartition(".")[2]
        value = self.get(
            t,
            key,
            path,
            lambda v: isinstance(v, str) and bool(re.fullmatch(r"https?://[^\s/]+(/\S*)?", v)),
            "an http(s):// URL",
            default,
        )
        if not value and not default:
            self.fail(path, "required (an http(s):// URL)")
        return value

    def webhooks(self) -> tuple[WebhookTarget, ...]:
        raw = self.doc.get("webhooks", [])
        if not isinstance(raw, list):
            self.fail("webhooks", "an array of tables ([[webhooks]])")
            return ()
        out, names = [], set()
        for i, t in enumerate(raw):
            path = f"webhooks[{i}]"
            if not isinstance(t, Mapping):
                self.fail(path, "must be a table")
                continue
            name = self.text(t, "name", f"{path}.name")
            if name and (not _NAME.fullmatch(name) or name in names):
                self.fail(f"{path}.name", "a unique short lowercase name")
            names.add(name)
            kinds = self.get(
                t,
                "kinds",
                f"{path}.kinds",
                lambda v: isinstance(v, list) and all(isinstance(k, str) for k in v),
                "a list of notice kinds",
                None,
            )
            secret = self.secret(t, "secret", f"{path}.secret")
            if secret is not None:
                out.append(
                    WebhookTarget(
                        name,
                        self.url(t, f"{path}.url"),
                        secret,
                        frozenset(kinds) if kinds is not None else None,
                        self.number(t, "timeout_s", f"{path}.timeout_s", 10, 1, 120),
                    )
                )
        return tuple(out)
