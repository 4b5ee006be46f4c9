"""Prepaid billing: tariffs, ledger, balances, top-ups, alerts, disconnect policy and the
relay command lifecycle. Public names only; the machinery lives in the submodules."""

from billing.engine import (
    SIGNING_KEY_ENV,
    BillingConfig,
    BillingConfigError,
    BillingEngine,
    EngineStats,
)
from billing.errors import BillingError
from billing.ledger import CHANNELS as TOPUP_CHANNELS
from billing.ledger import (
    AccountExists,
    LedgerEntry,
    TopupConflict,
    UnknownAccount,
    adjust,
    announce_topup,
    approve_cutoffs,
    balance,
    create_account,
    refund,
    topup,
)
from billing.lifecycle import CommandState
from billing.manual import (
    CommandInFlight,
    UnknownMeter,
    manual_relay,
    release_manual_hold,
)
from billing.money import DEFAULT_MAX_TOPUP, MoneyError, parse_yuan
from billing.notices import (
    Notice,
    NoticeError,
    due_notices,
    notices_of,
    record_evidence,
    record_notice,
)
from billing.policy import CreditSettings, ProtectedWindows
from billing.read_model import manual_holds

__all__ = [
    "DEFAULT_MAX_TOPUP",
    "SIGNING_KEY_ENV",
    "TOPUP_CHANNELS",
    "AccountExists",
    "BillingConfig",
    "BillingConfigError",
    "BillingEngine",
    "BillingError",
    "CommandInFlight",
    "CommandState",
    "CreditSettings",
    "EngineStats",
    "LedgerEntry",
    "MoneyError",
    "Notice",
    "NoticeError",
    "ProtectedWindows",
    "TopupConflict",
    "UnknownAccount",
    "UnknownMeter",
    "adjust",
    "announce_topup",
    "approve_cutoffs",
    "balance",
    "create_account",
    "due_notices",
    "manual_holds",
    "manual_relay",
    "notices_of",
    "parse_yuan",
    "record_evidence",
    "record_notice",
    "refund",
    "release_manual_hold",
    "topup",
]
