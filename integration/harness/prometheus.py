"""Runs a real Prometheus (Debian's ``prometheus`` package) scraping loopback targets, and queries it.

Private everywhere: its configuration and TSDB in the test's directory, its
web API on a free loopback port. ``promtool check metrics`` lints an
exposition the way Prometheus' own tooling does.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from integration.harness.colony import free_port


class PrometheusProcess:
    def __init__(self, directory: Path, *, targets: Mapping[str, str], interval_s: float = 1.0) -> None:
        """``targets``: job name -> host:port, scraped every ``interval_s``."""
        self.directory = directory
        self.port = free_port()
        self.log_path = directory / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        every = f"{interval_s:g}s"
        config = {
            "global": {"scrape_interval": every, "scrape_timeout": every, "evaluation_interval": every},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]} for job, target in targets.items()
            ],
        }
        self.config = directory / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))

    def start(self) -> PrometheusProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.directory / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        self.wait_for(lambda: self._get("/-/ready") is not None, timeout=30, what="Prometheus ready")
        return self

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return 0 if self.process is None else self.process.returncode
        self.process.terminate()
        return self.process.wait(15)

    def targets(self) -> dict[str, str]:
        """job -> health of its (one) target: up, down or unknown."""
        answer = self._api("/api/v1/targets")
        return {t["labels"]["job"]: t["health"] for t in answer["activeTargets"]}

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """An instant query: each series' labels and value."""
        answer = self._api("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        return [(r["metric"], float(r["value"][1])) for r in answer["result"]]

    def wait_for(self, predicate: Any, *, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"prometheus exited ({self.process.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n{self.log()[-3000:]}")
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _api(self, path: str) -> Any:
        body = self._get(path)
        if body is None:
            raise AssertionError(f"prometheus did not answer {path}:\n{self.log()[-3000:]}")
        answer = json.loads(body)
        assert answer["status"] == "success", f"{path}: {answer.get('errorType')}: {answer.get('error')}"
        return answer["data"]

    def _get(self, path: str) -> bytes | None:
        """The answer's body (an API error's too: it says what is wrong), None when nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            return bytes(exc.read())
        except OSError:
            return None


def scrape(address: str) -> bytes:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        return bytes(response.read())


def promtool_check(exposition: bytes) -> subprocess.CompletedProcess[str]:
    """``promtool check metrics`` on an exposition: rc 0 and no output when it follows the conventions."""
    return subprocess.run(
        ["promtool", "check", "metrics"], input=exposition.decode(), capture_output=True, text=True, timeout=30
    )
