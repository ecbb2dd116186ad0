"""What the args-serve tests share: a real uvicorn server in a thread on a free 127.0.0.1 port, the server's
Prometheus metrics read back from /metrics, and the single-request results the server's answers must equal."""

from __future__ import annotations

import socket
import threading
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadServer:
    """uvicorn serving `app` on 127.0.0.1 in a background thread, until the `with` block ends."""

    def __init__(self, app, ready_timeout: float = 120.0) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="test-uvicorn", daemon=True)
        self.ready_timeout = ready_timeout

    def __enter__(self) -> "ThreadServer":
        self.thread.start()
        deadline = time.monotonic() + self.ready_timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def wait_health(self, status: int = 200) -> dict:
        return wait_health(self.url, status, self.ready_timeout)

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def wait_health(url: str, status: int = 200, timeout: float = 120.0) -> dict:
    """Poll GET /health until it answers `status`; every other answer on the way must be 503 'loading'."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = httpx.get(f"{url}/health", timeout=10)
            if r.status_code == status:
                return r.json()
            assert r.status_code == 503 and r.json()["status"] == "loading", r.text
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/health never answered {status}")
        time.sleep(0.05)


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of the server's /metrics (0 when absent), e.g. metric(url, "args_requests_total", outcome="ok")."""
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def wait_idle(url: str, timeout: float = 120.0) -> None:
    """Until the server has nothing queued and nothing running."""
    deadline = time.monotonic() + timeout
    while metric(url, "args_queue_depth") or metric(url, "args_running_requests"):
        if time.monotonic() > deadline:
            raise TimeoutError("the server never went idle")
        time.sleep(0.05)
