"""`spot sim`: the simulators, real servers for tests, demos and benchmarks without a GPU."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    help="Run the simulators: `sim engine` (vLLM-compatible OpenAI server).",
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
    )
    if load_seconds > 0:
        typer.echo(f"spot sim engine: loading {model} for {load_seconds:g} s (port closed)", err=True)

    def ready(bound_host: str, bound_port: int) -> None:
        typer.echo(f"spot sim engine: serving {model} on http://{bound_host}:{bound_port}", err=True)

    run(config, on_ready=ready, log_level=log_level)
