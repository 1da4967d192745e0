"""``make demo`` for real: its entry point runs the whole product on a private containerd, shows what the
README promises, and leaves nothing behind, whether it ends by itself (``--once``) or by Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from integration.harness.images import ImageSet

REPO = Path(__file__).resolve().parent.parent
DEMO = [sys.executable, "-m", "integration.harness.demo"]
RUN_TIMEOUT_S = 240.0


def _section(output: str, command: str) -> list[list[str]]:
    """The rows (split on blanks) printed after the line ``$ coral COMMAND…``, up to the next blank line."""
    after = output.split(f"$ coral {command}", 1)[1].split("\n", 1)[1]
    return [line.split() for line in after.split("\n\n", 1)[0].splitlines()]


def _leftovers(output: str) -> list[str]:
    """What the demo made that still exists: its directory, processes naming it, its pod subnet's bridge."""
    directory = re.search(r"^coral demo in (\S+) ", output, re.MULTILINE)
    subnet = re.search(r"pod subnet (10\.250\.\d+)\.0/22", output)
    assert directory and subnet, output
    found = [directory[1]] if Path(directory[1]).exists() else []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if directory[1].encode() in (entry / "cmdline").read_bytes():
                    found.append(f"process {entry.name}")
            except OSError:
                continue
    addresses = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    found += [line.split()[1] for line in addresses.splitlines() if f" {subnet[1]}." in line]
    return found


def test_demo_once_shows_each_sample_pod_as_the_readme_says_and_leaves_nothing(harness_images: ImageSet) -> None:
    done = subprocess.run(
        [*DEMO, "--once"], cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr

    services = {row[3]: row for row in _section(done.stdout, "services")[1:]}
    assert {name: (row[1], row[4], row[6], row[7]) for name, row in services.items()} == {
        "checkout": ("shop", "8080/TCP", "discovered", "healthy"),
        "payments-api": ("shop", "8080/TCP", "overridden", "healthy"),
        "billing": ("shop", "9090/TCP", "overridden", "healthy"),
    }
    events = [(row[2], row[4]) for row in _section(done.stdout, "agent events --cache ")[1:] if len(row) > 4]
    assert ("skipped", "kube-proxy-x7k2p") in events
    assert ("error", "legacy-billing") in events
    assert events.index(("added", "db-migrate-28js1")) < events.index(("removed", "db-migrate-28js1"))
    assert 'coral.io/port: "eighty" is not a port number' in done.stdout
    assert re.search(r"^Status page: http://127\.0\.0\.1:\d+/$", done.stdout, re.MULTILINE)
    assert re.search(r"export CORAL_COLONY=\S+ CORAL_COLONY_CA=\S+ CORAL_TOKEN_FILE=\S+$", done.stdout, re.MULTILINE)
    assert _leftovers(done.stdout) == []


def test_ctrl_c_stops_the_running_demo_and_removes_everything(harness_images: ImageSet) -> None:
    demo = subprocess.Popen(DEMO, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert demo.stdout is not None
    output = ""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while not output.endswith("Ctrl-C stops the demo and removes everything it made.\n"):
            line = demo.stdout.readline()
            if not line or time.monotonic() > deadline:
                pytest.fail(f"the demo ended or hung before it ran:\n{output}")
            output += line
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 0, output + rest
    assert rest.splitlines()[-2:] == ["cleaning up: agent, pods, colony, containerd, bridge, directory", "done"]
    assert _leftovers(output) == []
