"""The emulator's ASGI app and its runner (``spot sim cloud``).

A ``/v1`` request goes through, in order: the request counter, the rate limit (429), an
injected fault if one matches (429, 5xx, or a real delay), the ``api_key`` check (401; every
path but ``/v1/billing/alive``), then its route. ``/_sim`` is the admin API (no auth, no
limit). Before each route and every 100 ms in the background the account is brought up to the
emulated clock's now; the effects of what changed (boot scripts, kills) are applied and the
state is saved when it changed.

Every answer carries a ``Date`` header in EMULATED time (RFC 9110 IMF-fixdate), uvicorn's own
(this machine's clock) turned off: the provider's "now", in the same time as the
``create_time`` and ``created_at`` it reports, since the emulated clock is scaled and advanced.

Nothing here logs a request's headers: uvicorn's access log (at ``--log-level info``) shows the
method, path and status only, so the API key never reaches a log line.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..engine import _bind, _http_protocol
from .account import CloudError
from .admin import Admin
from .api import Api
from .faults import FaultBook, RateLimiter
from .lifecycle import Cloud, Delays
from .processes import NodeProcesses
from .real_nodes import RealNodeMachines, address_for
from .routing import Receive, Request, Response, Router, Scope, Send, error, read_request, send_response

log = logging.getLogger(__name__)

TICK_S = 0.1
UNAUTHENTICATED = frozenset({"/v1/billing/alive"})


@dataclass(frozen=True, slots=True)
class CloudConfig:
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 8780
    delays: Delays = field(default_factory=Delays)
    time_scale: float = 1.0
    ssh_port: int | None = None
    rate_limit_per_minute: int = 500
    api_key: str | None = None  # None: any non-empty key is accepted
    id_offset: int = 0  # a fresh account's first VM/volume/... id is id_offset + 1 (a second account's ids differ)
    organization_id: int = 1
    real_nodes: bool = False  # VMs are real nodes (systemd in a container) instead of node directories

    def public(self) -> dict:
        """The settings shown by ``/_sim/state`` (never the key itself)."""
        return {"host": self.host, "port": self.port, "delays": asdict(self.delays), "time_scale": self.time_scale,
                "ssh_port": self.ssh_port, "rate_limit_per_minute": self.rate_limit_per_minute,
                "api_key_required": self.api_key is not None, "id_offset": self.id_offset,
                "organization_id": self.organization_id, "real_nodes": self.real_nodes}


class CloudApp:
    def __init__(self, config: CloudConfig, cloud: Cloud, processes: NodeProcesses | RealNodeMachines | None = None) -> None:
        self.config = config
        self.cloud = cloud
        self.processes = processes or NodeProcesses()
        self.faults = FaultBook()
        self.limiter = RateLimiter(config.rate_limit_per_minute)
        self.requests: Counter[str] = Counter()
        self.v1 = Router()
        Api(cloud, self.faults, ssh_port=config.ssh_port).register(self.v1)
        self.admin = Router()
        Admin(cloud, self.faults, self.requests, ssh_port=config.ssh_port, settings=config.public()).register(self.admin)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        req = await read_request(scope, receive)
        path = req.path
        if path.startswith("/v1/"):
            self.requests[f"{req.method} {path}"] += 1
            if not self.limiter.allow():
                limit = self.config.rate_limit_per_minute
                await self._send(send, _too_many(f"Too many requests: more than {limit} in a minute"))
                return
            fault = self.faults.take_request_fault(path)
            if fault is not None and fault.kind == "rate_limit":
                await self._send(send, _too_many("Too many requests"))
                return
            if fault is not None and fault.kind == "server_error":
                await self._send(send, Response(fault.status or 500, {"message": "Internal Server Error"}))
                return
            if fault is not None and fault.kind == "slow":
                await asyncio.sleep(fault.delay_s or 0.0)
            if path not in UNAUTHENTICATED and not self._authorized(req.headers.get("api_key")):
                await self._send(send, error(CloudError(401, "unauthorized", "Unauthorized: invalid or missing api_key")))
                return
            router = self.v1
        elif path.startswith("/_sim/"):
            router = self.admin
        else:
            await self._send(send, error(CloudError(404, "not_found", f"No route for {req.method} {path}")))
            return
        await self._send(send, self._dispatch(router, req))

    async def _send(self, send: Send, response: Response) -> None:
        await send_response(send, response, date=self.cloud.clock.http_date())

    def _authorized(self, key: str | None) -> bool:
        if not key:
            return False
        if self.config.api_key is None:
            return True
        return hmac.compare_digest(key.encode(), self.config.api_key.encode())

    def _dispatch(self, router: Router, req: Request) -> Response:
        try:
            self.tick()
            handler, params = router.match(req.method, req.path)
            response = handler(req, **params)
        except CloudError as exc:
            response = error(exc)
        except Exception:
            log.exception("%s %s failed", req.method, req.path)
            response = Response(500, {"message": "Internal Server Error"})
        self.settle()
        return response

    def tick(self) -> None:
        """Bring the account up to now and act on what changed."""
        self.cloud.sync()
        self.settle()

    def settle(self) -> None:
        self.processes.apply(self.cloud.drain_effects())
        self.cloud.save_if_dirty()

    async def run_ticks(self) -> None:
        while True:
            try:
                self.tick()
                self.processes.poll()
            except Exception:  # pragma: no cover - keep ticking whatever one tick met
                log.exception("background tick failed")
            await asyncio.sleep(TICK_S)


def _too_many(message: str) -> Response:
    return Response(429, {"status": False, "message": message, "error_reason": "too_many_requests"})


ReadyCallback = Callable[[str, int], None]


async def serve(config: CloudConfig, *, on_ready: ReadyCallback | None = None, log_level: str = "warning") -> None:
    """Open (or resume) the account in ``config.state_dir`` and serve it until stopped."""
    import uvicorn  # imported here: `spot --help` must not pay for it

    cloud = Cloud.open(config.state_dir, config.delays, time_scale=config.time_scale, id_offset=config.id_offset,
                       organization_id=config.organization_id)
    machines = None
    if config.real_nodes:
        from ..realnode.image import ensure_image

        machines = RealNodeMachines(cloud, ensure_image().root)  # built once per machine (minutes)
        cloud.node_address = address_for
    app = CloudApp(config, cloud, machines)
    app.tick()  # transitions due while the emulator was down, and their boots
    sock = _bind(config.host, config.port)
    server = uvicorn.Server(
        uvicorn.Config(app, http=_http_protocol(), ws="none", lifespan="off", access_log=True, date_header=False,
                       log_level=log_level, timeout_graceful_shutdown=1)
    )
    ticks = asyncio.create_task(app.run_ticks())
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if serving.done():
                break
            await asyncio.sleep(0.005)
        if server.started and on_ready is not None:
            host, port = sock.getsockname()[:2]
            on_ready(host, port)
        await serving
    finally:
        ticks.cancel()
        sock.close()
        app.tick()
        if machines is not None:
            machines.close()


def run(config: CloudConfig, *, on_ready: ReadyCallback | None = None, log_level: str = "warning") -> None:
    """``serve()`` on uvloop when installed, blocking until the server stops."""
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(config, on_ready=on_ready, log_level=log_level))
