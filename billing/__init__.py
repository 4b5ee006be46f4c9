"""Prepaid billing: tariffs, ledger, balances, top-ups, alerts, disconnect policy and the
relay command lifecycle. Public names only; the machinery lives in the submodules."""

from billing.customers import (
    Customer,
    CustomerError,
    UnknownCustomer,
    accounts_of,
    create_customer,
    customer_of_account,
    get_customer,
    link_account,
    mark_undeliverable,
    undeliverable_contacts,
    update_customer,
    verify_contacts,
)
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
    "Customer",
    "CustomerError",
    "EngineStats",
    "LedgerEntry",
    "MoneyError",
    "Notice",
    "NoticeError",
    "ProtectedWindows",
    "TopupConflict",
    "UnknownAccount",
    "UnknownCustomer",
    "UnknownMeter",
    "accounts_of",
    "adjust",
    "announce_topup",
    "approve_cutoffs",
    "balance",
    "create_account",
    "create_customer",
    "customer_of_account",
    "due_notices",
    "get_customer",
    "link_account",
    "manual_holds",
    "manual_relay",
    "mark_undeliverable",
    "notices_of",
    "parse_yuan",
    "record_evidence",
    "record_notice",
    "refund",
    "release_manual_hold",
    "topup",
    "undeliverable_contacts",
    "update_customer",
    "verify_contacts",
]
