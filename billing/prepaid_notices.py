"""The notices the prepaid policy gives customers itself: a low balance, and supply restored.

Recorded with :func:`billing.notices.record_notice` in the transaction of the decision (the
alert row), one per alert (``dedupe_key`` is the alert id), in both languages; ``notify``
delivers them. Neither is legally required, so quiet hours apply.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg

from billing.money import FEN
from billing.notices import record_notice


def _yuan(amount: Decimal) -> str:
    return str(amount.quantize(FEN))


def low_balance(
    conn: psycopg.Connection[Any],
    account_id: str,
    alert_id: int,
    balance: Decimal,
    threshold: Decimal,
    now: datetime,
) -> int:
    balance, threshold = Decimal(_yuan(balance)), Decimal(_yuan(threshold))
    params = {"account": account_id, "balance": str(balance), "threshold": str(threshold)}
    texts = {
        "zh-CN": {
            "subject": "电费余额不足提醒",
            "body": f"您的电费账户 {account_id} 余额为 {balance} 元，已低于 {threshold} "
            "元。请及时充值，以免欠费停电。",
        },
        "en": {
            "subject": "Low electricity balance",
            "body": f"The balance of your electricity account {account_id} is {balance} "
            f"yuan, below {threshold} yuan. Please top up to avoid a cut-off.",
        },
    }
    return record_notice(
        conn,
        account_id=account_id,
        kind="low_balance",
        required=False,
        not_before=now,
        params=params,
        texts=texts,
        dedupe_key=f"low_balance:alert:{alert_id}",
    )


def restored(
    conn: psycopg.Connection[Any],
    account_id: str,
    alert_id: int,
    balance: Decimal,
    restore_mode: str,
    now: datetime,
) -> int:
    press = restore_mode == "close_permitted"
    balance = Decimal(_yuan(balance))
    params = {"account": account_id, "balance": str(balance), "restore_mode": restore_mode}
    texts = {
        "zh-CN": {
            "subject": "恢复供电通知",
            "body": f"您的电费账户 {account_id} 余额为 {balance} 元，供电正在恢复。"
            + ("请按电表上的按钮合闸。" if press else ""),
        },
        "en": {
            "subject": "Supply restored",
            "body": f"Your electricity account {account_id} has a balance of {balance} "
            "yuan; supply is being restored."
            + (" Press the button on your meter to switch it on." if press else ""),
        },
    }
    return record_notice(
        conn,
        account_id=account_id,
        kind="restore",
        required=False,
        not_before=now,
        params=params,
        texts=texts,
        dedupe_key=f"restore:alert:{alert_id}",
    )
