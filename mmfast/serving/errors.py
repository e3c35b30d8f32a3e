"""The one error type of the HTTP layer and its JSON shape.

Every refusal the server makes is an :class:`ApiError`; the app turns it (and FastAPI's own
validation and routing errors) into ``{"error": {"code": CODE, "message": MESSAGE}}`` with its
status, so a client can branch on a stable ``code`` and show ``message`` to a person.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ApiError", "error_body"]


class ApiError(Exception):
    """A request the server refuses: HTTP status, a stable machine-readable code, a message
    naming the field or limit, and extra headers (Retry-After for 503)."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
