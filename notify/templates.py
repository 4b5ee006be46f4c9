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
class ProviderTemplate:
    """A provider's pre-approved template: its id per language and its named values, each
    a ``{placeholder}`` template filled from the notice. SMS calls them ``code`` and
    ``params``, WeChat ``template_id`` and ``fields`` (:data:`SMS_KEYS`, :data:`WECHAT_KEYS`)."""

    ids: dict[str, str]
    values: dict[str, str]
    values_key: str

    @classmethod
    def from_dict(cls, raw: Any, where: str, keys: tuple[str, str]) -> ProviderTemplate:
        id_key, values_key = keys
        if not isinstance(raw, Mapping) or set(raw) - {id_key, values_key}:
            raise TemplateError(f"{where}: keys are {id_key} and {values_key}")
        values = raw.get(values_key)
        if not isinstance(values, Mapping) or not values:
            raise TemplateError(f'{where}.{values_key}: a table of name = "{{placeholder}}"')
        for name, tpl in values.items():
            if not isinstance(tpl, str):
                raise TemplateError(f"{where}.{values_key}.{name}: must be text")
            placeholders(tpl, f"{where}.{values_key}.{name}")
        return cls(_per_language(raw.get(id_key), f"{where}.{id_key}"), dict(values), values_key)

    def render(self, message: Message, where: str) -> tuple[str, dict[str, str]]:
        """The template id in the customer's language and the filled values."""
        return self.ids[message.language], {
            k: fill(v, message, f"{where}.{self.values_key}.{k}") for k, v in self.values.items()
        }


SMS_KEYS = ("code", "params")
WECHAT_KEYS = ("template_id", "fields")
