"""The test run is hermetic: the network guard stops and records traffic past loopback, here and in
Python children; the package switches off its dependencies' update checks; a test that needs
../shared fails rather than skips where ../shared is present."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from xml.etree import ElementTree

import pytest

from tests.netguard import curate_netguard as netguard

ROOT = Path(__file__).resolve().parents[1]
# RFC 5737 TEST-NET-1, discard port: documentation space, never routed. Were the guard to let a
# connection through, it would time out; nothing would answer.
TEST_NET = ("192.0.2.1", 9)


def read_log(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [(e["what"], e["target"]) for e in map(json.loads, path.read_text().splitlines())]


@pytest.fixture
def own_log(tmp_path, monkeypatch) -> Path:
    """The guard records this test's deliberate violations in a log of its own, not the session's."""
    log = tmp_path / "violations.jsonl"
    monkeypatch.setenv(netguard.LOG_ENV, str(log))
    return log


def python(script: str, env: dict, timeout: int = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_which_addresses_and_names_count_as_local():
    assert netguard.installed()
    for ip in ("127.0.0.1", "127.0.0.2", "127.255.255.254", "::1", "::ffff:127.0.0.1", "0.0.0.0", "2130706433", "127.1", "0x7f.0.0.1"):
        assert netguard.is_local_address(ip) is True, ip
    for ip in ("192.0.2.1", "10.0.0.1", "172.17.0.2", "169.254.169.254", "8.8.8.8", "::ffff:8.8.8.8", "2001:db8::1", "134744072"):
        assert netguard.is_local_address(ip) is False, ip
    assert netguard.is_local_address("localhost") is None  # a name, not an address
    for name in ("localhost", "LOCALHOST.", "ip6-localhost", "spark.localhost", socket.gethostname(), "192.0.2.1", None, ""):
        assert netguard.is_local_name(name), name  # answered without a name server (IP literals: no lookup)
    for name in ("pypi.org", "huggingface.co", "localhost.example.com", "example.com", "127.0.0.1.nip.io", "1e100"):
        assert not netguard.is_local_name(name), name


def test_traffic_outside_loopback_is_stopped_and_recorded(own_log):
    with pytest.raises(netguard.NetworkBlocked):
        socket.create_connection(TEST_NET, timeout=1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        assert s.connect_ex(TEST_NET) != 0  # connect_ex keeps its contract: an errno, no exception
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(netguard.NetworkBlocked):
        s.sendto(b"x", TEST_NET)
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("pypi.org", 443)
    with pytest.raises(socket.gaierror):
        socket.gethostbyname("example.com")
    with pytest.raises(socket.gaierror):
        socket.gethostbyaddr("192.0.2.1")  # a reverse lookup asks DNS, literal or not
    with pytest.raises(socket.gaierror):
        socket.getnameinfo(TEST_NET, 0)
    assert read_log(own_log) == [
        ("connect", "192.0.2.1:9"),
        ("connect", "192.0.2.1:9"),
        ("sendto", "192.0.2.1:9"),
        ("getaddrinfo", "pypi.org"),
        ("gethostbyname", "example.com"),
        ("gethostbyaddr", "192.0.2.1"),
        ("getnameinfo", "192.0.2.1"),
    ]


def test_loopback_traffic_passes_and_is_not_recorded(own_log):
    for host in ("127.0.0.1", "127.0.0.2"):
        with socket.create_server((host, 0)) as server:
            with socket.create_connection(server.getsockname()[:2], timeout=5) as client:
                peer, _ = server.accept()
                client.sendall(b"ping")
                assert peer.recv(4) == b"ping"
                peer.close()
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(("localhost", server.getsockname()[1]), timeout=5):
            pass
    assert socket.getaddrinfo("localhost", 80) and socket.getaddrinfo("192.0.2.1", 9)  # a literal: no lookup
    assert socket.gethostbyaddr("127.0.0.1") and socket.getnameinfo(TEST_NET, socket.NI_NUMERICHOST)
    assert read_log(own_log) == []


def test_a_child_python_is_guarded_and_still_runs_the_sitecustomize_it_shadows(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os\nos.environ['OTHER_SITECUSTOMIZE_RAN'] = '1'\n")
    log = tmp_path / "child.jsonl"
    env = {**os.environ, netguard.LOG_ENV: str(log)}
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(other)])  # conftest's guard folder comes first
    script = textwrap.dedent("""
        import os, socket
        try:
            socket.create_connection(("192.0.2.1", 9), timeout=1)
            print("connected")
        except OSError as exc:
            print(type(exc).__name__, os.environ.get("OTHER_SITECUSTOMIZE_RAN"))
    """)
    assert python(script, env).stdout.split() == ["NetworkBlocked", "1"]
    assert read_log(log) == [("connect", "192.0.2.1:9")]


def test_importing_the_package_switches_off_update_checks_users_can_override():
    env = {k: v for k, v in os.environ.items() if k not in ("NO_ALBUMENTATIONS_UPDATE", "HF_HUB_DISABLE_TELEMETRY")}
    script = "import os, pipeline; print(os.environ.get('NO_ALBUMENTATIONS_UPDATE'), os.environ.get('HF_HUB_DISABLE_TELEMETRY'))"
    assert python(script, env).stdout.split() == ["1", "1"]
    assert python(script, {**env, "NO_ALBUMENTATIONS_UPDATE": "0"}).stdout.split() == ["0", "1"]


@pytest.mark.skipif(importlib.util.find_spec("img2dataset") is None, reason="img2dataset not installed")
def test_importing_img2dataset_after_the_package_sends_nothing(tmp_path):
    """Without the switch albumentations (under img2dataset) looks up pypi.org on import and the
    guard records it; with `pipeline` imported first nothing is sent."""
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    bare, ours = tmp_path / "bare.jsonl", tmp_path / "ours.jsonl"
    children = [  # side by side: each import takes seconds
        subprocess.Popen([sys.executable, "-W", "ignore", "-c", script], env={**env, netguard.LOG_ENV: str(log)}, stderr=subprocess.PIPE)
        for script, log in (("import img2dataset", bare), ("import pipeline, img2dataset", ours))
    ]
    for child in children:
        _, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-3000:]
    assert ("getaddrinfo", "pypi.org") in read_log(bare)
    assert read_log(ours) == []


INNER_TESTS = '''
import socket

import pytest

from tests.conftest import anchor
from tests.netguard import curate_netguard as netguard


@pytest.mark.shared
def test_marked_shared_skips():
    pytest.skip("no data")


def test_anchor_missing():
    anchor("no/such/file.parquet")


def test_unrelated_skip():
    pytest.skip("chromium not installed")


def test_swallowed_connection():
    try:
        socket.create_connection(("192.0.2.1", 9), timeout=1)
    except OSError:
        pass


def test_clean():
    pass
'''


@pytest.mark.parametrize("present", [True, False], ids=["shared-present", "shared-absent"])
def test_session_rules_in_a_pytest_run_of_their_own(tmp_path, present):
    """The conftest's hooks in a separate pytest run: traffic fails the test that made it (and the
    module that made it on import); a skip for want of ../shared fails only where it is present."""
    shared = tmp_path / "shared" / "anchors"
    if present:
        (shared / "data").mkdir(parents=True)
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "pytest.ini").write_text("[pytest]\nmarkers =\n    shared: needs ../shared\n")
    (inner / "conftest.py").write_text(
        "from pathlib import Path\n\nimport tests.conftest as base\nfrom tests.conftest import *  # noqa: F403 (its hooks)\n\n"
        f"base.SHARED = Path({str(shared)!r})\nbase.ANCHORS = base.SHARED / 'data'\n"
    )
    (inner / "test_inner.py").write_text(INNER_TESTS)
    (inner / "test_reaches_out_on_import.py").write_text(
        "import socket\n\ntry:\n    socket.getaddrinfo('pypi.org', 443)\nexcept OSError:\n    pass\n\n\ndef test_never_runs():\n    pass\n"
    )
    # A fresh interpreter whose only guard is the inner run's (no session log inherited).
    env = {k: v for k, v in os.environ.items() if k != netguard.LOG_ENV}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--continue-on-collection-errors", "--junitxml=r.xml", "."],
        cwd=inner, env=env, capture_output=True, text=True, timeout=300,
    )
    outcome = {}  # test (or module, for a collection error) -> (outcome, message)
    for case in ElementTree.parse(inner / "r.xml").iter("testcase"):
        result = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        text = "" if result is None else f"{result.get('message')} {result.text}"
        outcome[case.get("name")] = ("passed" if result is None else result.tag, text)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert outcome["test_swallowed_connection"][0] == "failure" and "connect 192.0.2.1:9" in outcome["test_swallowed_connection"][1]
    assert outcome["test_reaches_out_on_import"][0] == "error" and "getaddrinfo pypi.org" in outcome["test_reaches_out_on_import"][1]
    assert "test_never_runs" not in outcome
    assert outcome["test_clean"][0] == "passed" and outcome["test_unrelated_skip"][0] == "skipped"
    need_shared = "failure" if present else "skipped"
    assert outcome["test_marked_shared_skips"][0] == need_shared and outcome["test_anchor_missing"][0] == need_shared
    if present:  # anchor() fails by itself; the hook catches skips that do not go through it
        assert "missing from a present" in outcome["test_anchor_missing"][1]
        assert "skipped although" in outcome["test_marked_shared_skips"][1]
