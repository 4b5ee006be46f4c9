"""Errors the API answers with: JSON carrying a message a person can act on.

Handlers raise :class:`ApiError` (or one of its named children); the middleware in
``web.app`` turns it, and anything unexpected, into ``{"error": {"status", "message"}}``.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An answer other than success; ``message`` is shown to the user as is."""

    status = 400

    def __init__(self, message: str, *, status: int | None = None,
                 details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.details = details or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"status": self.status, "message": self.message}
        if self.details:
            err["details"] = self.details
        return {"error": err}


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class TooManyRequests(ApiError):
    status = 429


class Unavailable(ApiError):
    """A part of the system this answer needs is not there (e.g. billing not migrated)."""

    status = 503
