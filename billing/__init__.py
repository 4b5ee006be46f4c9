"""Prepaid billing: tariffs, ledger, balances, top-ups, alerts, disconnect policy and the
relay command lifecycle. Public names only; the machinery lives in the submodules."""

from billing.arrears import CLASSES as CUSTOMER_CLASSES
from billing.arrears import CollectionSettings
from billing.collection import (
    NotEscalated,
    NotHighVoltage,
    clear_escalation,
    create_plan,
    create_settlement_schedule,
    run_collection,
)
from billing.collection_reports import (
    arrears_report,
    collection_rates,
    penalty_lines,
    plans,
    settlement_schedules,
)
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
from billing.ebill import render_html as render_bill_html
from billing.ebill import render_pdf as render_bill_pdf
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
from billing.postpaid import (
    Bill,
    BillLine,
    NotPostpaid,
    bills_of,
    get_bill,
    issue_bill,
    issue_due_bills,
    open_postpaid,
)
from billing.read_model import manual_holds
from billing.relays import RelaylessMeter

__all__ = [
    "CUSTOMER_CLASSES",
    "DEFAULT_MAX_TOPUP",
    "SIGNING_KEY_ENV",
    "TOPUP_CHANNELS",
    "AccountExists",
    "Bill",
    "BillLine",
    "BillingConfig",
    "BillingConfigError",
    "BillingEngine",
    "BillingError",
    "CollectionSettings",
    "CommandInFlight",
    "CommandState",
    "CreditSettings",
    "Customer",
    "CustomerError",
    "EngineStats",
    "LedgerEntry",
    "MoneyError",
    "NotEscalated",
    "NotHighVoltage",
    "NotPostpaid",
    "Notice",
    "NoticeError",
    "ProtectedWindows",
    "RelaylessMeter",
    "TopupConflict",
    "UnknownAccount",
    "UnknownCustomer",
    "UnknownMeter",
    "accounts_of",
    "adjust",
    "announce_topup",
    "approve_cutoffs",
    "arrears_report",
    "balance",
    "bills_of",
    "clear_escalation",
    "collection_rates",
    "create_account",
    "create_customer",
    "create_plan",
    "create_settlement_schedule",
    "customer_of_account",
    "due_notices",
    "get_bill",
    "get_customer",
    "issue_bill",
    "issue_due_bills",
    "link_account",
    "manual_holds",
    "manual_relay",
    "mark_undeliverable",
    "notices_of",
    "open_postpaid",
    "parse_yuan",
    "penalty_lines",
    "plans",
    "record_evidence",
    "record_notice",
    "refund",
    "release_manual_hold",
    "render_bill_html",
    "render_bill_pdf",
    "run_collection",
    "settlement_schedules",
    "topup",
    "undeliverable_contacts",
    "update_customer",
    "verify_contacts",
]
