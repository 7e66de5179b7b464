"""What a client can make the gateway hold before its key is checked, from the client's side.

Raw sockets on loopback against a real `spot serve`: oversized and dribbled request heads, idle
connections, more connections than allowed (also under a low open-files limit), pipelined
floods, bodies trickled after an early answer, chunked bodies past the body limit; and the
operator endpoints, which only the operator token or the operator listener may read (also as
`spot doctor` reads them). Each case is bounded (at most 61 connections, a few seconds).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from spotinference.keys import create_key
from spotinference.store import Store
from tests.conftest import run_spot
from tests.servers import SPOT, ServerProcess, clean_env, dechunk, free_port, start_gateway

MODEL = "tiny-chat"
HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
HEADER_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def gateway(sim_engine: str, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("gateway-limits")
    key = create_key(Store(home), "limits").key
    server, url = start_gateway(home, {MODEL: sim_engine}, extra_env={
        "SPOT_GATEWAY__HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S), "SPOT_GATEWAY__MAX_BODY_BYTES": "65536"})
    yield url, key, home
    server.stop()


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def read_reply(sock: socket.socket, timeout_s: float = 10) -> tuple[bytes, bool]:
    """What the gateway sent, and whether it closed the connection (within ``timeout_s``)."""
    sock.settimeout(timeout_s)
    chunks = []
    try:
        while data := sock.recv(65536):
            chunks.append(data)
    except TimeoutError:
        return b"".join(chunks), False
    except ConnectionResetError:
        return b"".join(chunks), True
    return b"".join(chunks), True


def status_and_error(reply: bytes) -> tuple[int, dict]:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower(), reply[:300]
    if b"transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    return int(head.split()[1]), json.loads(body)["error"]


def test_request_headers_past_the_limit_without_a_key_are_431_and_closed(gateway) -> None:
    url, _, _ = gateway
    with connect(url) as sock:
        sock.sendall(HEAD + b"X-Pad: " + b"a" * 100_000 + b"\r\n")
        reply, closed = read_reply(sock)
    status, error = status_and_error(reply)
    assert status == 431 and error["code"] == "request_header_fields_too_large"
    assert closed


@pytest.mark.parametrize("size", [64 * 1024 + 1, 70_000, 200_000])
def test_a_whole_head_past_the_limit_in_one_write_is_431(gateway, size: int) -> None:
    url, _, _ = gateway
    head = HEAD + b"X-Pad: " + b"p" * size + b"\r\nContent-Length: 0\r\n\r\n"
    with connect(url) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.sendall(head)
        reply, closed = read_reply(sock)
    status, error = status_and_error(reply)
    assert status == 431 and error["code"] == "request_header_fields_too_large"
    assert closed


def test_a_head_just_under_the_limit_is_served(gateway) -> None:
    url, key, _ = gateway
    response = httpx.get(f"{url}/health", headers={"X-Pad": "p" * (60 * 1024)}, timeout=10)
    assert response.status_code == 200


def test_many_small_headers_past_the_limit_are_431(gateway) -> None:
    url, _, _ = gateway
    with connect(url) as sock:
        sock.sendall(HEAD + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 50) for i in range(2000)))
        reply, closed = read_reply(sock)
    assert status_and_error(reply)[0] == 431 and closed


def test_a_head_dribbled_one_byte_at_a_time_is_408_and_closed_at_the_header_time_limit(gateway) -> None:
    url, _, _ = gateway
    with connect(url) as sock:
        sock.sendall(HEAD)
        began = time.monotonic()
        sock.settimeout(0.5)
        reply = b""
        while time.monotonic() - began < HEADER_TIMEOUT_S + 8:
            try:
                sock.sendall(b"x")
                reply += sock.recv(65536)
                if reply:
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        rest, closed = read_reply(sock, timeout_s=5)
    status, error = status_and_error(reply + rest)
    assert status == 408 and error["code"] == "request_timeout"
    assert closed


def test_a_connection_that_sends_nothing_is_closed_at_the_header_time_limit(gateway) -> None:
    url, _, _ = gateway
    with connect(url) as sock:
        reply, closed = read_reply(sock, timeout_s=HEADER_TIMEOUT_S + 8)
    assert closed
    assert status_and_error(reply)[0] == 408


@pytest.mark.parametrize("framing", [b"Content-Length: 1000000\r\n", b"Transfer-Encoding: chunked\r\n"])
def test_a_client_answered_before_its_body_cannot_keep_the_connection_by_trickling_it(gateway, framing: bytes) -> None:
    """No key: the 401 goes out before the body is read. Trickling the body afterwards (a byte
    every 0.3 s) must not keep the connection open."""
    url, _, _ = gateway
    with connect(url) as sock:
        sock.sendall(HEAD + framing + b"\r\n" + (b"100\r\n" if b"chunked" in framing else b""))
        sock.settimeout(0.3)
        reply = b""
        began = time.monotonic()
        closed = False
        while time.monotonic() - began < HEADER_TIMEOUT_S + 8:
            try:
                sock.sendall(b"x")
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if not data:
                closed = True
                break
            reply += data
    status, error = status_and_error(reply)
    assert status == 401 and error["code"] == "invalid_api_key"
    assert closed, "the connection is still open"


def test_a_few_pipelined_requests_are_each_answered(gateway) -> None:
    url, key, _ = gateway
    with connect(url) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: g\r\n\r\n" * 5 + b"GET /health HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n")
        reply, closed = read_reply(sock)
    assert reply.count(b"HTTP/1.1 200 OK") == 6 and closed


def test_thousands_of_pipelined_requests_never_read_back_close_the_connection(gateway) -> None:
    """Without a key: uvicorn would queue every request of each read (~14,000 per 256 KB)."""
    url, _, _ = gateway
    request = b"GET /v1/models HTTP/1.1\r\nHost: g\r\n\r\n"
    with connect(url) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sent, closed = 0, False
        sock.settimeout(0.5)
        began = time.monotonic()
        while time.monotonic() - began < 10 and sent < 64 * 2**20:
            try:
                sent += sock.send(request * 2000)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
    assert closed, f"still open after {sent} bytes of pipelined requests"
    assert httpx.get(f"{url}/health", timeout=10).json() == {"status": "ok"}


def test_a_chunked_body_past_the_body_limit_is_413(gateway) -> None:
    url, key, _ = gateway

    def chunks():
        yield b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"a" * 4096
        yield b'"}]}'

    response = httpx.post(f"{url}/v1/chat/completions", content=chunks(),
                          headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_the_public_health_says_only_ok_and_metrics_need_the_operator_token(gateway) -> None:
    url, key, home = gateway
    assert httpx.get(f"{url}/health", timeout=10).json() == {"status": "ok"}
    # An API key is not the operator token.
    assert httpx.get(f"{url}/health", headers={"Authorization": f"Bearer {key}"}, timeout=10).json() == {"status": "ok"}
    refused = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "operator_token_required"
    assert httpx.get(f"{url}/metrics", timeout=10).status_code == 401
    token = (home / "operator-token").read_text().strip()
    assert (home / "operator-token").stat().st_mode & 0o077 == 0
    operator = {"Authorization": f"bearer {token}"}
    detail = httpx.get(f"{url}/health", headers=operator, timeout=10).json()
    assert detail["status"] == "ok" and detail["models"] == [MODEL]
    metrics = httpx.get(f"{url}/metrics", headers=operator, timeout=10)
    assert metrics.status_code == 200 and "spot_requests_total" in metrics.text
    assert token not in (home / next(p.name for p in home.glob("gateway-*.log"))).read_text()


def test_the_operator_listener_needs_no_token_and_keeps_the_api_port_closed(sim_engine: str, tmp_path: Path) -> None:
    home = tmp_path / "gw"
    operator_port = free_port()
    server, url = start_gateway(home, {MODEL: sim_engine}, extra_env={
        "SPOT_GATEWAY__OPERATOR_PORT": str(operator_port), "SPOT_GATEWAY__OPERATOR_TOKEN": "op-secret-from-env"})
    try:
        operator = f"http://127.0.0.1:{operator_port}"
        assert httpx.get(f"{operator}/health", timeout=10).json()["models"] == [MODEL]
        assert "spot_requests_total" in httpx.get(f"{operator}/metrics", timeout=10).text
        assert httpx.get(f"{url}/metrics", timeout=10).status_code == 401
        assert httpx.get(f"{url}/health", timeout=10).json() == {"status": "ok"}
        with_env_token = {"Authorization": "Bearer op-secret-from-env"}
        assert httpx.get(f"{url}/metrics", headers=with_env_token, timeout=10).status_code == 200
        assert not (home / "operator-token").exists()  # the environment's token is the token
    finally:
        server.stop()
    assert "op-secret-from-env" not in server.log_path.read_text()


def test_past_max_connections_a_request_gets_503_and_a_freed_slot_serves_again(sim_engine: str, tmp_path: Path) -> None:
    home = tmp_path / "gw"
    key = create_key(Store(home), "k").key
    server, url = start_gateway(home, {MODEL: sim_engine}, extra_env={"SPOT_GATEWAY__MAX_CONNECTIONS": "3"})
    held = [connect(url) for _ in range(3)]
    try:
        time.sleep(0.3)  # the gateway has accepted them
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        with connect(url) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer %s\r\n"
                         b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (key.encode(), len(body), body.encode()))
            reply, closed = read_reply(sock)
        status, error = status_and_error(reply)
        assert status == 503 and error["code"] == "too_many_connections"
        assert b"retry-after: 1" in reply.lower() and closed
        # One that sends nothing while the gateway is full is let go well before header_timeout_s
        # (10 s here): its file descriptor is not held for nothing.
        with connect(url) as sock:
            reply, closed = read_reply(sock, timeout_s=8)
        assert closed and status_and_error(reply)[0] == 408
        held.pop().close()
        time.sleep(0.3)
        response = httpx.post(f"{url}/v1/chat/completions", content=body,
                              headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert response.status_code == 200
    finally:
        for sock in held:
            sock.close()
        server.stop()


def test_past_max_connections_under_a_low_open_files_limit_a_request_still_gets_the_503(sim_engine: str, tmp_path: Path) -> None:
    """Started with a soft limit of 64 open files (as under some shells and units), the gateway
    raises it for max_connections, so connection 61 of 60 idle ones still gets its answer."""
    home = tmp_path / "gw"
    port = free_port()
    env = clean_env(home, SPOT_GATEWAY__MAX_CONNECTIONS="40")
    command = ["sh", "-c", f'ulimit -Sn 64 && exec "$0" serve --port {port} --upstream {MODEL}={sim_engine}', str(SPOT)]
    server = ServerProcess(command, env=env, log_path=home / "gateway.log",
                           health_url=f"http://127.0.0.1:{port}/health").start()
    url = f"http://127.0.0.1:{port}"
    held = []
    try:
        held = [connect(url) for _ in range(60)]
        time.sleep(0.5)
        with connect(url) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: g\r\n\r\n")
            reply, closed = read_reply(sock, timeout_s=5)
        status, error = status_and_error(reply)
        assert status == 503 and error["code"] == "too_many_connections" and closed
    finally:
        for sock in held:
            sock.close()
        server.stop()


def test_spot_doctor_reads_the_detail_with_the_operator_token_and_says_so_without_it(sim_engine: str, tmp_path: Path) -> None:
    home = tmp_path / "gw"
    server, url = start_gateway(home, {MODEL: sim_engine})
    try:
        port = url.rsplit(":", 1)[1]
        env = {"SPOT_HOME": str(home), "SPOT_GATEWAY__PORT": port,
               "SPOT_PROVIDERS__SIM__BASE_URL": f"http://127.0.0.1:{free_port()}/v1"}
        with_token = json.loads(run_spot("doctor", "--json", env=env).stdout)
        gateway = next(c for c in with_token["checks"] if c["name"] == "gateway")
        assert gateway["ok"] and not gateway["warning"] and MODEL in gateway["detail"]
        wrong = json.loads(run_spot("doctor", "--json", env={**env, "SPOT_GATEWAY__OPERATOR_TOKEN": "not-it"}).stdout)
        gateway = next(c for c in wrong["checks"] if c["name"] == "gateway")
        assert gateway["ok"] and gateway["warning"] and "operator token" in gateway["detail"]
        assert MODEL not in gateway["detail"]
    finally:
        server.stop()
