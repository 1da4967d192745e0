"""The agent's memory and CPU with Prometheus metrics off and on, at steady state with N pods (issue 13).

One containerd with N pods; the agent runs there alternately without
``metrics.listen`` (no listener, prometheus-client not loaded) and with it,
``--rounds`` times each. With metrics on, a scraper reads ``/metrics``
every second while RSS and CPU are sampled (Prometheus' default interval
is 15 to 60 s: this is the harsher case), and the scrape time is measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

from bench.discovery import rss_and_cpu, web
from bench.report import memory_mib, percentile, publish
from integration.harness.agent import AgentProcess
from integration.harness.colony import free_port
from integration.harness.containerd import PrivateContainerd
from integration.harness.images import ensure_images
from integration.harness.pods import PodFactory

REPO = Path(__file__).resolve().parent.parent


class Scraper:
    """Reads ``url`` every ``interval_s`` on a thread, timing each read."""

    def __init__(self, url: str, interval_s: float = 1.0) -> None:
        self.url = url
        self.interval_s = interval_s
        self.samples_ms: list[float] = []
        self.size = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            with urllib.request.urlopen(self.url, timeout=5) as answer:
                self.size = len(answer.read())
            self.samples_ms.append((time.perf_counter() - started) * 1000)
            self._stop.wait(self.interval_s)


def steady_state(
    runtime: PrivateContainerd, work: Path, *, count: int, idle_s: float, listen: str
) -> tuple[float, float, float, Scraper | None]:
    """(RSS MiB, peak RSS MiB, CPU %, the scraper when metrics are on) of one agent run."""
    args: tuple[str, ...] = ()
    if listen:
        config = work / "metrics.yaml"
        config.write_text(yaml.safe_dump({"metrics": {"listen": listen}}))
        args = ("--config", str(config))
    cache = work / f"agent-{time.monotonic_ns()}.db"
    agent = AgentProcess(cri_socket=runtime.socket_path, cache=cache, extra_args=args)
    agent.start()
    try:
        agent.wait_for(lambda: len(agent.services()) >= count, timeout=300, what=f"{count} services")
        time.sleep(2)
        if not listen:
            rss, cpu = rss_and_cpu(agent.pid, idle_s)
            return rss, memory_mib(agent.pid)[1], cpu, None
        with Scraper(f"http://{listen}/metrics") as scraper:
            rss, cpu = rss_and_cpu(agent.pid, idle_s)
        return rss, memory_mib(agent.pid)[1], cpu, scraper
    finally:
        agent.stop()


def run(count: int, idle_s: float, rounds: int) -> str:
    work = Path(tempfile.mkdtemp(prefix="coral-bench-metrics-"))
    images = ensure_images(REPO / ".cache" / "images")
    runs: dict[str, list[tuple[float, float, float]]] = {"off": [], "on": []}
    scrapes: list[float] = []
    size = 0
    with PrivateContainerd(work / "containerd", images=images) as runtime:
        factory = PodFactory(runtime)
        factory.create_pods_concurrently([web(f"svc{i:03d}-{i}") for i in range(count)])
        for round_ in range(rounds):
            for mode in ("off", "on"):
                listen = f"127.0.0.1:{free_port()}" if mode == "on" else ""
                rss, peak, cpu, scraper = steady_state(runtime, work, count=count, idle_s=idle_s, listen=listen)
                runs[mode].append((rss, peak, cpu))
                if scraper is not None:
                    scrapes += scraper.samples_ms
                    size = scraper.size
                print(f"round {round_ + 1}, metrics {mode}: {rss:.1f} MiB (peak {peak:.1f}), {cpu:.2f} % CPU")
        factory.close()
    shutil.rmtree(work, ignore_errors=True)

    def median(mode: str, field: int) -> float:
        return statistics.median(r[field] for r in runs[mode])

    rss_off, rss_on = median("off", 0), median("on", 0)
    return "\n".join(
        [
            f"Machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, containerd from Debian, {count} pods; "
            f"{rounds} runs of the agent each way, alternating; medians; RSS sampled after {idle_s:.0f} s of steady "
            "state, with metrics on while `/metrics` was scraped every second.",
            "",
            "| measure | metrics off | metrics on |",
            "|---|---|---|",
            f"| agent RSS at steady state, {count} pods | {rss_off:.1f} MiB | {rss_on:.1f} MiB "
            f"(**{rss_on - rss_off:+.1f} MiB**) |",
            f"| agent peak RSS (VmHWM) | {median('off', 1):.1f} MiB | {median('on', 1):.1f} MiB |",
            f"| agent CPU over {idle_s:.0f} s | {median('off', 2):.2f} % of a core | "
            f"{median('on', 2):.2f} % of a core |",
            f"| one scrape of `/metrics`, p50 / p99 ({len(scrapes)} scrapes) | | "
            f"{percentile(scrapes, 50):.1f} / {percentile(scrapes, 99):.1f} ms |",
            f"| exposition size | | {size} bytes |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pods", type=int, default=250)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of steady-state sampling per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    body = run(args.pods, args.idle, args.rounds)
    title = "Metrics: the agent's memory with metrics off and on (issue 13)"
    publish(body, key="metrics", title=title, output=args.output)


if __name__ == "__main__":
    main()
