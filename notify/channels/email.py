"""E-mail over SMTP (aiosmtplib): the notice's own subject and body, in the customer's
language, as plain text. The provider id is the Message-ID we set, so a bounce that comes
back later can be matched to the notice."""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from email.message import EmailMessage

import aiosmtplib

from meterhub.security.secrets import Secret
from notify.channels.base import DeliveryError, Message, Sent

FOOTER = {
    "zh-CN": "此邮件由系统自动发送，请勿直接回复。",
    "en": "This message was sent automatically; please do not reply to it.",
}


@dataclass(frozen=True)
class EmailSettings:
    host: str
    port: int
    sender: str  # the From address, e.g. "Meterhub <billing@example.com>"
    username: str | None = None
    password: Secret | None = None
    starttls: bool = False  # STARTTLS on a plain port (587)
    tls: bool = False  # implicit TLS (465)
    timeout_s: float = 20.0


class EmailChannel:
    name = "email"

    def __init__(self, settings: EmailSettings) -> None:
        self.settings = settings

    def compose(self, to: str, message: Message) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self.settings.sender
        mail["To"] = to
        mail["Subject"] = message.subject
        mail["Date"] = email.utils.formatdate(usegmt=True)
        domain = email.utils.parseaddr(self.settings.sender)[1].rpartition("@")[2] or "meterhub"
        mail["Message-ID"] = email.utils.make_msgid(f"notice-{message.notice_id}", domain)
        mail["Content-Language"] = message.language
        mail.set_content(f"{message.body}\n\n-- \n{FOOTER[message.language]}\n")
        return mail

    async def send(self, to: str, message: Message) -> Sent:
        s = self.settings
        mail = self.compose(to, message)
        try:
            await aiosmtplib.send(
                mail,
                hostname=s.host,
                port=s.port,
                username=s.username,
                password=s.password.reveal() if s.password else None,
                start_tls=s.starttls,
                use_tls=s.tls,
                timeout=s.timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            dead = any(500 <= c < 600 for c in codes)
            raise DeliveryError(
                f"smtp: recipient refused ({', '.join(map(str, codes))})",
                retry=not dead,
                dead_contact=dead,
            ) from None
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(
                f"smtp: login refused ({exc.code}); check the username and password", retry=True
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise DeliveryError(
                f"smtp: {exc.code} {exc.message[:120]}", retry=exc.code < 500
            ) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryError(
                f"smtp: {type(exc).__name__}: {str(exc)[:120]}", retry=True
            ) from None
        return Sent(str(mail["Message-ID"]), f"accepted by {s.host}")
