"""Delivery channels: e-mail (SMTP), SMS (an HTTP provider), WeChat template messages and
signed webhooks. Each takes a rendered message and a contact and either returns the
provider's message id or raises :class:`notify.channels.base.DeliveryError` saying whether
to retry, and whether the contact itself is dead (staff re-verify it)."""
