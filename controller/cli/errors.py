"""The one error type the CLI reports: `error <code>: <message>`, exit status 1."""

from __future__ import annotations


class CliError(Exception):
    def __init__(self, code: str, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail  # e.g. the tail of a log, printed after the error line

    def __str__(self) -> str:
        return f"error {self.code}: {self.message}"
