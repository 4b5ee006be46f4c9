"""Delivery of billing's notices to customers (e-mail, SMS, WeChat) and to a site's webhook
subscribers, with templates per language, quiet hours, rate limits, retries and evidence
back to billing. Imports the kernel and billing's public API only."""

from notify.config import NotifyConfig, NotifyConfigError, QuietHours
from notify.service import NotifyService, NotifyStats

__all__ = ["NotifyConfig", "NotifyConfigError", "NotifyService", "NotifyStats", "QuietHours"]
