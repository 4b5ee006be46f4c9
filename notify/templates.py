"""Channel templates per notice kind and language, and their rendering.

The notice carries its own text (subject and body in zh-CN and en, as billing issued it);
e-mail sends that text. SMS and WeChat cannot: their providers only send pre-approved
templates, filled with parameters. So each of those channels has, per notice kind, the
provider's template id per language and how to fill its parameters from the notice's
``params`` (plus ``subject``, ``body``, ``account`` and ``kind``). Placeholders are plain
``{name}``: checked when the config is loaded, so a typo is a start-up error naming the key,
not a night of failed cut-off notices.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from notify.channels.base import Message

LANGUAGES = ("zh-CN", "en")
BUILT_IN = frozenset({"subject", "body", "account", "kind"})


class TemplateError(ValueError):
    """A template that cannot be used or filled; the message names the key."""


def placeholders(template: str, where: str) -> set[str]:
    """The ``{name}`` fields of ``template``; anything fancier is refused."""
    names = set()
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(f"{where}: {exc}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise TemplateError(f"{where}: placeholder {{{name}}} must be a plain {{name}}")
        names.add(name)
    return names


def values(message: Message) -> dict[str, str]:
    return {
        **message.params,
        "subject": message.subject,
        "body": message.body,
        "account": message.account_id,
        "kind": message.kind,
    }


def fill(template: str, message: Message, where: str) -> str:
    known = values(message)
    missing = placeholders(template, where) - set(known)
    if missing:
        raise TemplateError(
            f"{where}: the {message.kind} notice has no parameter {', '.join(sorted(missing))}"
        )
    return template.format_map(known)


def _per_language(raw: Any, where: str) -> dict[str, str]:
    if isinstance(raw, str):
        raw = dict.fromkeys(LANGUAGES, raw)
    if (
        not isinstance(raw, Mapping)
        or set(raw) != set(LANGUAGES)
        or not all(isinstance(v, str) and v for v in raw.values())
    ):
        raise TemplateError(f'{where}: one id per language: {{"zh-CN" = ..., en = ...}}')
    return dict(raw)


@dataclass(frozen=True)
class SmsTemplate:
    """The provider's template code per language, and its parameters, each a template."""

    codes: dict[str, str]
    params: dict[str, str]

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> SmsTemplate:
        if not isinstance(raw, Mapping) or set(raw) - {"code", "params"}:
            raise TemplateError(f"{where}: keys are code and params")
        params = raw.get("params", {})
        if not isinstance(params, Mapping):
            raise TemplateError(f'{where}.params: a table of name = "{{placeholder}}"')
        for name, tpl in params.items():
            if not isinstance(tpl, str):
                raise TemplateError(f"{where}.params.{name}: must be text")
            placeholders(tpl, f"{where}.params.{name}")
        return cls(_per_language(raw.get("code"), f"{where}.code"), dict(params))

    def render(self, message: Message, where: str) -> tuple[str, dict[str, str]]:
        return self.codes[message.language], {
            k: fill(v, message, f"{where}.params.{k}") for k, v in self.params.items()
        }


@dataclass(frozen=True)
class WechatTemplate:
    """The official account's template id per language and its data fields."""

    ids: dict[str, str]
    fields: dict[str, str]

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> WechatTemplate:
        if not isinstance(raw, Mapping) or set(raw) - {"template_id", "fields"}:
            raise TemplateError(f"{where}: keys are template_id and fields")
        fields = raw.get("fields")
        if not isinstance(fields, Mapping) or not fields:
            raise TemplateError(f'{where}.fields: a table of field = "{{placeholder}}"')
        for name, tpl in fields.items():
            if not isinstance(tpl, str):
                raise TemplateError(f"{where}.fields.{name}: must be text")
            placeholders(tpl, f"{where}.fields.{name}")
        return cls(_per_language(raw.get("template_id"), f"{where}.template_id"), dict(fields))

    def render(self, message: Message, where: str) -> tuple[str, dict[str, str]]:
        return self.ids[message.language], {
            k: fill(v, message, f"{where}.fields.{k}") for k, v in self.fields.items()
        }
