"""A provider that is down, or struggling, as the operator sees it from the CLI.

Down (connection refused, a host that does not resolve): commands answer in seconds with one
line and exit 4, not after two minutes of silent retries. Struggling (429, 5xx): each retry is a
line on stderr. Down for a moment in the middle of a wake: the wake rides it out.
The upper bounds on time are the issue's own ("within 5 s"); nothing else is timed.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import SPOT, run_spot
from tests.fleet_config import sim_tier, write_fleet_config
from tests.servers import free_port, start_sim_cloud
from tests.test_fleet import FAST, Cloud, ok, status_json, write_config


def timed(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = run_spot(*args)
    return result, time.monotonic() - started


def assert_one_line_unreachable(result: subprocess.CompletedProcess[str], elapsed_s: float, why: str) -> None:
    assert result.returncode == 4, result.stderr
    assert elapsed_s < 5.0, f"took {elapsed_s:.1f} s: {result.stderr}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: cannot reach sim at ") and why in lines[0], lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.fixture
def stoppable_cloud(tmp_path: Path):
    """An emulator the test may stop and start again on the same port and state."""
    port = free_port()
    server, root = start_sim_cloud(tmp_path / "cloud", *FAST, port=port)
    write_config(f"{root}/v1")
    cloud = Cloud(f"{root}/v1", server)
    cloud.port = port
    yield cloud
    if cloud.server.proc is None or cloud.server.proc.poll() is not None:
        cloud.server, _ = start_sim_cloud(tmp_path / "cloud", *FAST, port=port)
    run_spot("down", "demo", "--terminate", "--yes")
    cloud.server.stop()


def test_status_and_wake_with_the_emulator_stopped_answer_in_seconds_with_one_line(
        stoppable_cloud: Cloud, tmp_path: Path) -> None:
    ok("up", "demo")
    ok("hibernate", "demo")
    stoppable_cloud.server.stop()

    assert_one_line_unreachable(*timed("status"), "connection refused")
    assert_one_line_unreachable(*timed("wake", "demo"), "connection refused")
    assert_one_line_unreachable(*timed("status", "--json"), "connection refused")

    # The provider is back: the same command now works, on the same VM.
    stoppable_cloud.server, _ = start_sim_cloud(tmp_path / "cloud", *FAST, port=stoppable_cloud.port)
    ok("wake", "demo")
    assert [n["state"] for n in status_json()] == ["serving"] and len(stoppable_cloud.vms()) == 1


@pytest.mark.parametrize("base_url, why", [
    (f"http://127.0.0.1:{free_port()}/v1", "connection refused"),
    ("http://spot-provider.invalid/v1", "host name not resolved"),
], ids=["closed-port", "unknown-host"])  # not the port: each xdist worker picks its own, the ids must agree
def test_a_closed_port_or_an_unknown_host_fails_in_seconds(base_url: str, why: str) -> None:
    write_config(base_url)
    for args in (["status"], ["up", "demo"], ["wake", "demo"], ["hibernate", "demo"]):
        assert_one_line_unreachable(*timed(*args), why)


def test_each_retry_of_a_struggling_provider_is_one_line_on_stderr(stoppable_cloud: Cloud) -> None:
    stoppable_cloud.fault(kind="server_error", count=2, status=503, path_prefix="/v1/core/virtual-machines")
    result = run_spot("status")
    assert result.returncode == 0, result.stderr
    retries = [line for line in result.stderr.splitlines() if "retrying:" in line]
    assert len(retries) == 2, result.stderr
    assert all("GET /core/virtual-machines: 503" in line for line in retries)
    assert "retry 1 in" in retries[0] and "retry 2 in" in retries[1]

    # With --json they are JSON lines on stderr; stdout stays the one document.
    stoppable_cloud.fault(kind="server_error", count=1, status=502, path_prefix="/v1/core/virtual-machines")
    result = run_spot("status", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    [retry] = [json.loads(line) for line in result.stderr.splitlines()]
    assert retry["event"] == "retry" and retry["method"] == "GET" and retry["answer"].startswith("502")
    assert retry["attempt"] == 1 and retry["wait_s"] > 0


@pytest.mark.parametrize(("command", "path"), [
    (("volumes",), "/v1/core/volumes"),
])
def test_commands_outside_the_fleet_show_each_retry_too(stoppable_cloud: Cloud, command: tuple[str, ...],
                                                         path: str) -> None:
    # An operator waiting on `spot volumes` sees why it waits. (`spot sample`
    # shows them only at a terminal: cron's log keeps one line per failed run, test_sampler.py.)
    stoppable_cloud.fault(kind="server_error", count=2, status=503, path_prefix=path)
    result = run_spot(*command)
    assert result.returncode == 0, result.stderr
    retries = [line for line in result.stderr.splitlines() if "retrying:" in line]
    assert len(retries) == 2 and all(": 503" in line for line in retries), result.stderr

    stoppable_cloud.fault(kind="server_error", count=1, status=502, path_prefix=path)
    result = run_spot(*command, "--json")
    assert result.returncode == 0, result.stderr
    json.loads(result.stdout)  # stdout stays the one document
    [retry] = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert retry["event"] == "retry" and retry["answer"].startswith("502")


def test_a_provider_restart_in_the_middle_of_a_wake_is_ridden_out(tmp_path: Path) -> None:
    """Refused polls during a wake are tried again for a while (reported as they happen): an API
    restart longer than one call's few seconds of grace must not abort a ten-minute wake."""
    port = free_port()
    flags = ["--create-seconds", "1", "--hibernate-seconds", "1", "--restore-seconds", "8", "--delete-seconds", "0.5"]
    server, root = start_sim_cloud(tmp_path / "cloud", *flags, port=port)
    write_fleet_config(f"{root}/v1", {"demo": sim_tier(sim={"load_seconds": 0.5})})
    cloud = Cloud(f"{root}/v1", server)
    wake = None
    try:
        ok("up", "demo")
        ok("hibernate", "demo")
        wake = subprocess.Popen([str(SPOT), "wake", "demo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while [vm["status"] for vm in cloud.vms()] != ["RESTORING"] and time.monotonic() < deadline:
            time.sleep(0.2)
        cloud.server.stop()
        time.sleep(5)  # longer than one call's grace for refused connections
        cloud.server, _ = start_sim_cloud(tmp_path / "cloud", *flags, port=port)
        out, err = wake.communicate(timeout=120)
        assert wake.returncode == 0, err
        assert "provider unreachable" in err
        assert [n["state"] for n in status_json()] == ["serving"] and len(cloud.vms()) == 1
    finally:
        if wake is not None and wake.poll() is None:
            wake.kill()
        run_spot("down", "demo", "--terminate", "--yes")
        cloud.server.stop()


# -- the client itself, against real sockets; its clock and sleep are injected ---------------------


def test_refused_connections_end_the_call_after_the_grace_not_the_deadline() -> None:
    """A call against a closed port stops after the few seconds of grace, not 120 s of backoff;
    and a create whose provider vanishes between its look-up and its POST stops as quickly: no
    request-timeout "settle" before looking again (nothing was sent, nothing can settle)."""
    import http.server
    import threading

    from spotinference.providers.errors import ProviderUnreachableError
    from tests.test_hyperstack_provider import FakeTime, make_provider, spec

    timer = FakeTime()
    with make_provider(f"http://127.0.0.1:{free_port()}/v1", timer) as provider:
        started = timer.now
        with pytest.raises(ProviderUnreachableError) as refused:
            provider.list_vms()
        assert refused.value.exit_code == 4 and "connection refused" in str(refused.value)
        assert timer.now - started < 5.0  # the client's own (fake) clock: 3 s of grace, not 120

    class OneAnswer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the look-up before the create: no VM of that name
            # Stop listening before answering: the POST that follows is refused, never accepted by
            # the kernel and then reset (which would really be ambiguous: the request was sent).
            self.server.socket.close()
            body = b'{"status": true, "instances": []}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), OneAnswer)
    port = server.server_address[1]

    threading.Thread(target=server.handle_request, daemon=True).start()
    with make_provider(f"http://127.0.0.1:{port}/v1", timer, request_timeout_s=30) as provider:
        started = timer.now
        with pytest.raises(ProviderUnreachableError):
            provider.create_vm(spec("t-vanishing"))
        assert timer.now - started < 5.0, "waited as if the POST might have reached the provider"


def test_a_connection_refused_for_a_moment_is_tried_again_even_for_a_post_that_is_never_repeated() -> None:
    """The provider's API comes back a second later: the call, even one made with retry=False
    (a POST that must never be sent twice), goes through, because the refused attempts sent nothing."""
    import http.server
    import threading

    from spotinference.providers.hyperstack_api import HyperstackApi

    port = free_port()
    posts = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            posts.append(self.path)
            body = b'{"status": true, "message": "created"}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server: list[http.server.HTTPServer] = []

    def start_later() -> None:
        time.sleep(1.0)
        server.append(http.server.HTTPServer(("127.0.0.1", port), Handler))
        server[0].serve_forever()

    threading.Thread(target=start_later, daemon=True).start()
    api = HyperstackApi(provider="sim", base_url=f"http://127.0.0.1:{port}/v1", api_key="k")
    try:
        answer = api.call("POST", "/core/virtual-machines", json={"name": "x"}, retry=False)
    finally:
        api.close()
        if server:
            server[0].shutdown()
    assert answer["message"] == "created" and posts == ["/v1/core/virtual-machines"]
