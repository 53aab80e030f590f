"""What every CLI command gets: the home and, on first use, a signed API client."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from controller.cli.client import ApiClient, Credentials
from controller.cli.home import Home


@dataclass
class CliContext:
    home: Home
    credentials_file: Path
    _client: ApiClient | None = field(default=None, repr=False)

    def client(self) -> ApiClient:
        if self._client is None:
            self._client = ApiClient(Credentials.load(self.credentials_file))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
