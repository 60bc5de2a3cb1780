"""The one error type the API maps to a status and the JSON error body."""

from __future__ import annotations


class ApiError(Exception):
    """
    A refusal with its HTTP status, a stable snake_case C{code} and a
    sentence a person can act on.  C{rule_id} is set on policy denials (403).
    Messages never contain tokens or echo raw input.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        rule_id: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.rule_id = rule_id
        self.headers = headers or {}

    def body(self) -> dict:
        error = {"code": self.code, "message": self.message}
        if self.rule_id is not None:
            error["rule_id"] = self.rule_id
        return {"error": error}


def not_found() -> ApiError:
    return ApiError(404, "session_not_found", "No such session: it does not exist, has ended or was deleted, or is not yours.")
