"""A small synchronous HTTP client for the daemon's unix socket (stdlib only, fast start)."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meshd.errors import ApiError, DaemonError


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class DaemonClient:
    def __init__(self, socket_path: Path, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def is_running(self) -> bool:
        try:
            self.request("GET", "/v1/health")
        except DaemonError:
            return False
        except ApiError:
            return True
        return True

    def stream(self, method: str, path: str) -> Iterator[bytes]:
        """The response body in chunks as it arrives (for `logs --follow`)."""
        conn = _UnixConnection(self.socket_path, timeout=None)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            if resp.status >= 400:
                raw = resp.read()
                try:
                    msg = json.loads(raw).get("error")
                except ValueError:
                    msg = None
                raise ApiError(str(msg or f"meshd answered HTTP {resp.status}"), resp.status)
            while chunk := resp.read1(65536):
                yield chunk
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonError(
                f"meshd is not running for this data directory (no answer on "
                f"{self.socket_path}); start it with `meshd run`"
            ) from exc
        finally:
            conn.close()

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonError(
                f"meshd is not running for this data directory (no answer on "
                f"{self.socket_path}); start it with `meshd run`"
            ) from exc
        except PermissionError as exc:
            raise DaemonError(f"permission denied on {self.socket_path}; run as root") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise DaemonError(f"lost the connection to meshd on {self.socket_path}: {exc}") from exc
        finally:
            conn.close()
        ctype = resp.getheader("Content-Type", "")
        data: Any = (
            json.loads(raw) if raw and ctype.startswith("application/json") else raw.decode()
        )
        if resp.status >= 400:
            msg = data.get("error") if isinstance(data, dict) else None
            raise ApiError(str(msg or f"meshd answered HTTP {resp.status}"), resp.status)
        return data
