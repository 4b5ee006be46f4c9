"""The legal text of every billing notice, in Chinese and English, filled from the notice's
parameters (strings). Kept here once so the ladder, the policy and the tests say the same."""

from __future__ import annotations

from collections.abc import Mapping

# kind -> language -> (subject, body); placeholders are the notice's params
_TEXTS: dict[str, dict[str, tuple[str, str]]] = {
    "bill": {
        "zh-CN": (
            "电费账单 {period}",
            "户号 {account}：{period} 电费账单已出，应缴金额 {amount_due} 元，"
            "请于 {due_date} 前缴清。逾期按日加收违约金。",
        ),
        "en": (
            "Electricity bill {period}",
            "Account {account}: your bill for {period} is issued. Amount due {amount_due} "
            "yuan, to be paid by {due_date}. Late payment incurs a daily penalty.",
        ),
    },
    "reminder": {
        "zh-CN": (
            "缴费提醒",
            "户号 {account}：您的电费 {amount} 元将于 {due_date} 到期，请及时缴纳。",
        ),
        "en": (
            "Payment reminder",
            "Account {account}: {amount} yuan is due on {due_date}. Please pay in time.",
        ),
    },
    "due_today": {
        "zh-CN": ("今日到期", "户号 {account}：您的电费 {amount} 元今日（{due_date}）到期。"),
        "en": ("Due today", "Account {account}: {amount} yuan is due today ({due_date})."),
    },
    "collection": {
        "zh-CN": (
            "催缴通知",
            "户号 {account}：您的电费 {amount} 元已逾期。请于 {deadline} 前缴清。"
            "自 {first_overdue} 起按日加收违约金：{penalty_rule}，不足 1 元按 1 元收取。"
            "逾期超过 {stop_after_days} 天仍未缴清的，将依法停止供电。",
        ),
        "en": (
            "Collection notice",
            "Account {account}: {amount} yuan is overdue. Please pay by {deadline}. "
            "From {first_overdue} a daily penalty applies: {penalty_rule}; a total under "
            "1 yuan is charged as 1 yuan. Supply may be stopped when more than "
            "{stop_after_days} days overdue.",
        ),
    },
    "planned_disconnection": {
        "zh-CN": (
            "停电通知",
            "户号 {account}：您的电费 {amount} 元逾期已超过 {stop_after_days} 天。"
            "如仍未缴清，将于送达后 {cut_notice_days} 天起"
            "（不早于 {earliest_cut}）停止供电。",
        ),
        "en": (
            "Notice of planned disconnection",
            "Account {account}: {amount} yuan has been overdue for more than "
            "{stop_after_days} days. Unless paid, supply will be stopped from "
            "{cut_notice_days} days after delivery of this notice (not before "
            "{earliest_cut}).",
        ),
    },
    "posted_notice": {
        "zh-CN": (
            "停电公告（{group}）",
            "{group} 小区欠费用户将于 {earliest_cut} 起停止供电，本公告张贴于停电前至少 "
            "{posted_notice_days} 天。户号 {account} 在列。",
        ),
        "en": (
            "Posted notice of disconnection ({group})",
            "Households of {group} in arrears will be disconnected from {earliest_cut}; "
            "this notice is posted at least {posted_notice_days} days before. "
            "Account {account} is listed.",
        ),
    },
    "final_notice": {
        "zh-CN": ("停电前通知", "户号 {account}：因欠费 {amount} 元，将于 30 分钟后停止供电。"),
        "en": (
            "Final notice",
            "Account {account}: supply will be stopped in 30 minutes for {amount} yuan unpaid.",
        ),
    },
    "cutoff": {
        "zh-CN": ("已停止供电", "户号 {account}：因欠费 {amount} 元已停止供电，缴清后即恢复。"),
        "en": (
            "Supply stopped",
            "Account {account}: supply stopped for {amount} yuan unpaid; "
            "it is restored as soon as it is paid.",
        ),
    },
    "restore": {
        "zh-CN": ("已恢复供电", "户号 {account}：欠费已缴清，供电已恢复。"),
        "en": ("Supply restored", "Account {account}: the arrears are paid; supply is restored."),
    },
    "instalment": {
        "zh-CN": (
            "分期缴费协议",
            "户号 {account}：分期协议已生效，共 {count} 期 {total} 元，首期 {first_due}。"
            "按期缴纳期间不停电{waiver_zh}。",
        ),
        "en": (
            "Instalment plan",
            "Account {account}: your plan of {count} instalments ({total} yuan, first due "
            "{first_due}) is in force. Supply is not stopped while it is kept{waiver_en}.",
        ),
    },
    "instalment_missed": {
        "zh-CN": (
            "分期未按期缴纳",
            "户号 {account}：{missed_due} 到期的分期未缴，分期协议终止，恢复正常催缴。",
        ),
        "en": (
            "Instalment missed",
            "Account {account}: the instalment due {missed_due} was not paid; the plan has "
            "ended and normal collection resumes.",
        ),
    },
    "settlement_schedule": {
        "zh-CN": (
            "月内分次结算安排 {month}",
            "户号 {account}：{month} 月内分次结算已约定，预计月度电费 {expected} 元，"
            "分次应缴：{schedule}；其余随月度账单结清。",
        ),
        "en": (
            "In-month settlement {month}",
            "Account {account}: in-month settlement for {month} is agreed on an expected "
            "{expected} yuan: {schedule}; the rest is settled with the month's bill.",
        ),
    },
    "settlement_missed": {
        "zh-CN": (
            "分次结算逾期通知",
            "户号 {account}：{due_date} 应缴的月内分次电费尚欠 {amount} 元，已逾期。"
            "请尽快缴清；逾期超过 {stop_after_days} 天仍未缴清的，将依法停止供电。",
        ),
        "en": (
            "In-month instalment overdue",
            "Account {account}: {amount} yuan of the in-month instalment due {due_date} is "
            "unpaid. Please pay now; supply may be stopped when more than "
            "{stop_after_days} days overdue.",
        ),
    },
}


def render(kind: str, params: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """The texts of a notice: ``{"zh-CN": {"subject", "body"}, "en": {...}}``."""
    try:
        langs = _TEXTS[kind]
    except KeyError:
        raise KeyError(f"no text for notice kind {kind!r}") from None
    return {
        lang: {"subject": s.format_map(params), "body": b.format_map(params)}
        for lang, (s, b) in langs.items()
    }
