"""`spot sim`: the simulators, real servers for tests, demos and benchmarks without a GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..state import CliState

app = typer.Typer(
    help=(
        "Run the simulators: `sim engine` (vLLM-compatible OpenAI server) and `sim cloud` "
        "(Hyperstack API emulator whose VMs are directories on this machine)."
    ),
    no_args_is_help=True,
)


@app.callback()
def main() -> None:
    """Run the simulators."""


@app.command("engine")
def engine(
    model: Annotated[str, typer.Option("--model", help="Served model name (what clients put in `model`).")],
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: any free port).")] = 8000,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    ttft_ms: Annotated[float, typer.Option("--ttft-ms", help="Time to first token, before prompt cost.")] = 20.0,
    itl_ms: Annotated[float, typer.Option("--itl-ms", help="Time between later tokens.")] = 5.0,
    prefill_ms_per_token: Annotated[
        float, typer.Option("--prefill-ms-per-token", help="Extra time to first token per prompt token.")
    ] = 0.0,
    slowdown_per_request: Annotated[
        float,
        typer.Option(
            "--slowdown-per-request",
            help="Each extra running request makes every step this much slower (0.05 = 5%).",
        ),
    ] = 0.0,
    load_seconds: Annotated[
        float, typer.Option("--load-seconds", help="Start-up time with the port closed, like vLLM loading weights.")
    ] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the generated text and reply lengths.")] = 0,
    max_model_len: Annotated[
        int, typer.Option("--max-model-len", help="Context length: prompt plus reply tokens.")
    ] = 2048,
    reply_tokens_min: Annotated[
        int, typer.Option("--reply-tokens-min", help="Shortest reply (EOS included) when max_tokens allows it.")
    ] = 16,
    reply_tokens_max: Annotated[
        int, typer.Option("--reply-tokens-max", help="Longest reply (EOS included) when max_tokens allows it.")
    ] = 128,
    max_num_seqs: Annotated[
        int, typer.Option("--max-num-seqs", help="Sequences running at once; more wait (vllm:num_requests_waiting).")
    ] = 256,
    kv_cache_tokens: Annotated[
        int, typer.Option("--kv-cache-tokens", help="KV-cache size behind vllm:kv_cache_usage_perc.")
    ] = 65536,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn's log level.")] = "warning",
    runner: Annotated[str | None, typer.Option(
        "--runner", help="What the model is, as vLLM's --runner: generate (chat), pooling (embeddings, "
        "score, rerank) or transcription (audio); default $SPOT_SIM_ENGINE_RUNNER, else generate.",
        show_default=False)] = None,
) -> None:
    """A vLLM-compatible OpenAI server that generates deterministic tokens on a timing model."""
    from spotinference.sim.engine import EngineConfig, run
    from spotinference.sim.timing import TimingModel

    config = EngineConfig(
        model=model,
        host=host,
        port=port,
        timing=TimingModel(
            ttft_ms=ttft_ms,
            itl_ms=itl_ms,
            prefill_ms_per_token=prefill_ms_per_token,
            slowdown_per_request=slowdown_per_request,
            load_seconds=load_seconds,
        ),
        max_model_len=max_model_len,
        seed=seed,
        reply_tokens_min=reply_tokens_min,
        reply_tokens_max=reply_tokens_max,
        max_num_seqs=max_num_seqs,
        kv_cache_tokens=kv_cache_tokens,
        **({"runner": runner} if runner is not None else {}),
    )
    if load_seconds > 0:
        typer.echo(f"spot sim engine: loading {model} for {load_seconds:g} s (port closed)", err=True)

    def ready(bound_host: str, bound_port: int) -> None:
        typer.echo(f"spot sim engine: serving {model} on http://{bound_host}:{bound_port}", err=True)

    run(config, on_ready=ready, log_level=log_level)


@app.command("cloud")
def cloud(
    ctx: typer.Context,
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: any free port).")] = 8780,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", help="Where the account is kept (state.json, nodes/). [default: $SPOT_HOME/sim-cloud]",
                     show_default=False),
    ] = None,
    create_seconds: Annotated[
        float, typer.Option("--create-seconds", help="Create: CREATING for 1/3 of this, BUILD for 2/3, then ACTIVE.")
    ] = 20.0,
    hibernate_seconds: Annotated[float, typer.Option("--hibernate-seconds", help="HIBERNATING before HIBERNATED.")] = 10.0,
    restore_seconds: Annotated[float, typer.Option("--restore-seconds", help="RESTORING before ACTIVE.")] = 15.0,
    delete_seconds: Annotated[float, typer.Option("--delete-seconds", help="DELETING before the VM is gone (404).")] = 3.0,
    time_scale: Annotated[
        float, typer.Option("--time-scale", help="Emulated seconds per real second (delays and billing minutes).")
    ] = 1.0,
    ssh_port: Annotated[
        int | None,
        typer.Option("--ssh-port", help="Port of an sshd on 127.0.0.1 that reaches every node, reported in each VM.",
                     show_default=False),
    ] = None,
    rate_limit_per_minute: Annotated[
        int, typer.Option("--rate-limit-per-minute", help="Past this many /v1 requests in a minute: 429 (0: no limit).")
    ] = 500,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", help="Accept only this api_key header [default: any non-empty key].",
                     show_default=False),
    ] = None,
    id_offset: Annotated[
        int, typer.Option("--id-offset", help="A fresh account's ids start after this (a second account: 1000).")
    ] = 0,
    organization_id: Annotated[
        int, typer.Option("--organization-id", help="A fresh account's organization_id (in billing answers).")
    ] = 1,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn's log level (info: one line per request).")] = "warning",
    real_nodes: Annotated[
        bool,
        typer.Option("--real-nodes", help="Each VM is a real Debian node: systemd and sshd in a container (root; "
                     "Debian packages debootstrap, systemd-container), at its own address."),
    ] = False,
) -> None:
    """Emulate Hyperstack's API on this machine, for tests, demos and trying spot without an account.

    Point a Hyperstack provider at http://HOST:PORT/v1 (any api_key is accepted unless
    --api-key is given). VMs go through Hyperstack's states with the delays given (in emulated seconds), bill per
    emulated minute (full rate while running, storage while hibernated), and each is a
    directory under STATE_DIR/nodes/ whose boot/*.sh scripts run when it becomes ACTIVE and
    whose run/*.pid processes are killed when it stops. The state survives restarts. An admin
    API at /_sim (faults, billing faults, reclaims, clock advance, state dump) drives it from
    tests. Every answer's Date header is in emulated time. A second account is a second
    emulator: another --state-dir and --port (and --id-offset so ids differ).

    With --real-nodes, each VM is instead a Debian bookworm booted with systemd in a container
    (systemd-nspawn), in its own network namespace at its own address (the VM's fixed_ip and
    floating_ip), with sshd accepting the VM's key pair for the sudo user ubuntu and a loop
    device as /dev/vdb: hibernate powers it off cleanly, restore boots the same disk again,
    delete removes it. The root image is built once per machine (debootstrap, a few minutes).
    """
    from spotinference.sim.cloud.lifecycle import Delays
    from spotinference.sim.cloud.server import CloudConfig, run

    for name, value in (("--create-seconds", create_seconds), ("--hibernate-seconds", hibernate_seconds),
                        ("--restore-seconds", restore_seconds), ("--delete-seconds", delete_seconds)):
        if value < 0:
            raise typer.BadParameter(f"must be 0 or more, got {value:g}", param_hint=name)
    if time_scale <= 0:
        raise typer.BadParameter(f"must be more than 0, got {time_scale:g}", param_hint="--time-scale")
    if rate_limit_per_minute < 0:
        raise typer.BadParameter("must be 0 or more", param_hint="--rate-limit-per-minute")
    if api_key is not None and not api_key:
        raise typer.BadParameter("must not be empty", param_hint="--api-key")
    if id_offset < 0:
        raise typer.BadParameter("must be 0 or more", param_hint="--id-offset")
    if organization_id < 1:
        raise typer.BadParameter("must be 1 or more", param_hint="--organization-id")
    if state_dir is None:
        state: CliState = ctx.obj
        state_dir = state.settings.home / "sim-cloud"
    config = CloudConfig(
        state_dir=state_dir.expanduser().resolve(),
        host=host,
        port=port,
        delays=Delays(create_s=create_seconds, hibernate_s=hibernate_seconds, restore_s=restore_seconds,
                      delete_s=delete_seconds),
        time_scale=time_scale,
        ssh_port=ssh_port,
        rate_limit_per_minute=rate_limit_per_minute,
        api_key=api_key,
        id_offset=id_offset,
        organization_id=organization_id,
        real_nodes=real_nodes,
    )
    if real_nodes:
        from spotinference.sim.realnode.host import check_host
        from spotinference.sim.realnode.image import cached_image, ensure_image

        check_host()  # what is missing, before promising a build
        if cached_image() is None:
            typer.echo("spot sim cloud: building the real-node image (debootstrap, once per machine)...", err=True)
        ensure_image()

    def ready(bound_host: str, bound_port: int) -> None:
        typer.echo(f"spot sim cloud: Hyperstack API on http://{bound_host}:{bound_port}/v1 "
                   f"(state in {config.state_dir}, time x{time_scale:g})", err=True)

    run(config, on_ready=ready, log_level=log_level)
