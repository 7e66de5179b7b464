"""`spot bench`, `spot bench list`, `spot bench compare`: measured throughput and latency.

`spot bench` with no subcommand runs a benchmark (the group's callback), so the fixed command
line `spot bench --base-url URL --model NAME --target both --concurrency 1,16 --requests N
--output-tokens T --json` works next to `spot bench list` and `spot bench compare RUN RUN`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from ..output import print_json, print_table
from ..state import CliState
from .options import JsonOption

if TYPE_CHECKING:
    from spotinference.bench import BenchRun

_SLO_TOKEN = re.compile(r"^[A-Za-z0-9]+:[0-9.]+$")


class _BenchGroup(TyperGroup):
    """Takes `--goodput ttft:500 tpot:50` (several values after one flag, as `vllm bench serve` does)."""

    def parse_args(self, ctx, args):  # noqa: ANN001, ANN201
        out, i = [], 0
        while i < len(args):
            out.append(args[i])
            if args[i] == "--goodput" and i + 1 < len(args):
                values, i = [args[i + 1]], i + 2
                while i < len(args) and _SLO_TOKEN.match(args[i]):
                    values.append(args[i])
                    i += 1
                out.append(" ".join(values))
                continue
            i += 1
        return super().parse_args(ctx, out)


app = typer.Typer(cls=_BenchGroup, invoke_without_command=True, no_args_is_help=False,
                  help="Benchmark a tier through the gateway and directly: throughput, TTFT, TPOT, ITL, E2E.")


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="bench")


def _numbers(option: str, text: str, kind: type) -> list:
    from spotinference.errors import InputError

    try:
        values = [kind(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        values = []
    if not values or any(not v > 0 for v in values):
        raise InputError(f"{option} {text!r} is not a comma-separated list of positive numbers (e.g. 1,4,16,64)")
    return values


@app.callback()
def bench(
    ctx: typer.Context,
    base_url: Annotated[str | None, typer.Option("--base-url", envvar="OPENAI_BASE_URL", help="The gateway's URL (default: the config's gateway.host and gateway.port), or the engine's with --target direct.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="The served model name (default: the tier's).")] = None,
    key: Annotated[str | None, typer.Option("--key", envvar="OPENAI_API_KEY", help="The gateway API key (`spot keys create`).")] = None,
    direct_url: Annotated[str | None, typer.Option("--direct-url", help="An engine's URL, called directly (--target direct/both).")] = None,
    direct_key: Annotated[str | None, typer.Option("--direct-key", help="The engine's API key, if it demands one.")] = None,
    target: Annotated[str, typer.Option("--target", help="gateway, direct, or both (interleaved, with the gateway's added latency).")] = "gateway",
    on_node: Annotated[str | None, typer.Option("--on-node", help="Run the load generator ON this node over SSH, against its local engine.")] = None,
    tier: Annotated[str | None, typer.Option("--tier", help="The configured tier measured: its GPU and current rate (cost projection).")] = None,
    concurrency: Annotated[str | None, typer.Option("--concurrency", help="Closed loop: concurrent streams; a list is a sweep (1,4,16,64). Default 1.")] = None,
    rate: Annotated[str | None, typer.Option("--rate", help="Open loop: requests per second, Poisson arrivals; a list is a sweep.")] = None,
    requests: Annotated[int | None, typer.Option("--requests", "-n", help="Counted requests per target per level. Default 100.")] = None,
    duration: Annotated[float | None, typer.Option("--duration", help="Seconds per level, instead of --requests.")] = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Requests per target before each level, not counted.")] = 0,
    input_tokens: Annotated[int, typer.Option("--input-tokens", help="Synthetic prompt length, tokens (about one per word).")] = 128,
    output_tokens: Annotated[int, typer.Option("--output-tokens", help="Tokens generated per request (max_tokens + ignore_eos).")] = 256,
    spread: Annotated[float, typer.Option("--spread", help="Lengths drawn in ±spread around those (0.1 = ±10%).")] = 0.0,
    prompts: Annotated[Path | None, typer.Option("--prompts", help='A JSONL file: {"prompt": ...} or {"messages": [...]} per line.')] = None,
    api: Annotated[str, typer.Option("--api", help="The API benchmarked: chat (/v1/chat/completions), completions, responses, messages (Anthropic), embeddings (not streamed).")] = "chat",
    endpoint: Annotated[str | None, typer.Option("--endpoint", hidden=True, help="The former name of --api (chat or completions).")] = None,
    goodput: Annotated[list[str] | None, typer.Option("--goodput", help="SLOs in ms for goodput: --goodput ttft:500 tpot:50.")] = None,
    saturation_stop: Annotated[bool, typer.Option("--saturation-stop/--no-saturation-stop", help="End a sweep once TTFT rises while throughput does not.")] = True,
    saturation_ttft_rise: Annotated[float, typer.Option("--saturation-ttft-rise", help="A level's median TTFT rise over the previous that counts as rising.")] = 0.25,
    saturation_min_gain: Annotated[float, typer.Option("--saturation-min-gain", help="Throughput gain over the best level that justifies that rise.")] = 0.05,
    saturation_levels: Annotated[int, typer.Option("--saturation-levels", help="Saturated levels in a row before the sweep stops.")] = 1,
    metrics_url: Annotated[str | None, typer.Option("--metrics-url", help="The engine whose /metrics to watch (default: the direct URL).")] = None,
    gpu: Annotated[str | None, typer.Option("--gpu", help="A GPU label to save with the run (default: the tier's).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds before one request counts as failed.")] = 600.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the prompts and arrivals.")] = 0,
    plot: Annotated[bool, typer.Option("--plot", help="Draw throughput against latency across the sweep.")] = False,
    save: Annotated[bool, typer.Option("--save/--no-save", help="Save the run in the store (default) for list/compare.")] = True,
    json: JsonOption = False,
) -> None:
    """Run a benchmark (without a subcommand); `spot bench list` and `spot bench compare A B` read saved runs."""
    if ctx.invoked_subcommand is not None:
        return
    from spotinference.bench import BenchSpec, PromptShape, Saturation, Slo, Target, project_cost, run_bench
    from spotinference.bench.apis import APIS
    from spotinference.bench.tier import engine_version
    from spotinference.errors import InputError

    if target not in ("gateway", "direct", "both"):
        raise InputError(f"--target {target!r} is not one of: gateway, direct, both")
    api = _api(ctx, api, endpoint)
    generating = APIS[api].streamed
    if not generating and _given(ctx, "output_tokens"):
        raise InputError(f"--output-tokens: --api {api} generates nothing (it is not streamed: "
                         "latency and input tokens/s are measured instead)")
    if concurrency is not None and rate is not None:
        raise InputError("give either --concurrency or --rate, not both")
    if requests is not None and duration is not None:
        raise InputError("give either --requests or --duration, not both")
    if saturation_levels < 1:
        raise InputError(f"--saturation-levels must be 1 or more, got {saturation_levels}")
    concurrencies = None if rate is not None else _numbers("--concurrency", concurrency or "1", int)
    rates = _numbers("--rate", rate, float) if rate is not None else None
    shape = PromptShape(input_tokens, output_tokens, spread, prompts)
    slo = Slo.parse(goodput)
    state: CliState = ctx.obj
    meta: dict[str, Any] = {"tier": tier, "gpu": gpu, "on_node": on_node}
    facts = None
    fleet = None
    node_bench = None
    url_from_config = False
    # By name: Typer ships its own copy of click, whose ParameterSource is not click's.
    if on_node and getattr(ctx.get_parameter_source("base_url"), "name", None) == "ENVIRONMENT":
        base_url = None  # OPENAI_BASE_URL names a gateway; --on-node measures the node's own engine
    try:
        if on_node or tier:
            from spotinference.bench.tier import tier_facts
            from spotinference.fleet.context import FleetContext
            from spotinference.fleet.naming import parse_node_name

            fleet = FleetContext(state.settings, state.store())
            if on_node:
                parsed = parse_node_name(on_node)
                if parsed is None:
                    raise InputError(f"--on-node {on_node!r} is not a node name: expected spot-<tier>-<n>")
                if tier is not None and tier != parsed[0]:
                    raise InputError(f"node {on_node} is not in tier {tier}")
                meta["tier"] = parsed[0]
            facts = tier_facts(fleet, meta["tier"], on_node)
            meta["gpu"] = gpu or facts.gpu
            meta["rate_note"] = facts.rate_note
            model = model or facts.model
        if on_node:
            if target != "gateway" or base_url or direct_url:
                raise InputError("--on-node benchmarks the node's own engine: leave out --target, --base-url and --direct-url")
            from spotinference.bench.remote import NodeBench

            node_bench = NodeBench(fleet, on_node).__enter__()  # type: ignore[arg-type]
            targets = [Target("on-node", node_bench.engine_url, node_bench.engine_key)]
            watched = node_bench.engine_url
            meta["engine_version"] = engine_version(facts.engine_url if facts else None, node_bench.engine_key)
        else:
            targets = []
            if target in ("gateway", "both"):
                url = base_url or (facts.gateway_url if facts else None)
                if url is None:
                    from spotinference.bench.tier import gateway_url

                    url, url_from_config = gateway_url(state.settings), True
                targets.append(Target("gateway", url, key))
            if target in ("direct", "both"):
                url = direct_url or (base_url if target == "direct" else None)
                engine_key_ = direct_key or (key if target == "direct" and not direct_url else None)
                if url is None and facts is not None:
                    url, engine_key_ = facts.engine_url, direct_key or facts.engine_key
                if url is None:
                    raise InputError("--direct-url is required for --target both: the engine's URL (e.g. http://NODE:8000)")
                targets.append(Target("direct", url, engine_key_))
            direct = next((t for t in targets if t.name == "direct"), None)
            watched = metrics_url or (direct.base_url if direct else None)
            meta["engine_version"] = engine_version(direct.base_url if direct else targets[0].base_url,
                                                    direct.key if direct else key)
        spec = BenchSpec(
            model=model or "", targets=targets, concurrencies=concurrencies, rates=rates,
            requests=requests if requests is not None or duration is not None else 100, duration_s=duration,
            warmup=warmup, shape=shape, api=api, slo=slo, seed=seed, timeout_s=timeout,
            metrics_url=metrics_url or watched,
            saturation=Saturation(saturation_ttft_rise, saturation_min_gain, saturation_levels) if saturation_stop else None,
        )
        executor = node_bench.execute if node_bench is not None else None
        with _progress(quiet=json) as on_progress:
            run = run_bench(spec, executor, on_progress) if executor else run_bench(spec, on_progress=on_progress)
    finally:
        if node_bench is not None:
            node_bench.close()
        if fleet is not None:
            fleet.close()
    run.meta.update(meta)
    if run.all_failed:  # nothing was measured: no table, no saved run, just why
        _raise_failures(run, url_from_config)
    if facts is not None:
        project_cost(run, facts.usd_per_hour)
    if save:
        from spotinference.bench.results import save_run

        save_run(state.store(), run)
    if json:
        print_json([{"run_id": run.run_id, **row} for row in run.rows])
    else:
        _show_run(run)
    if plot:
        from spotinference.bench.plot import throughput_latency_chart

        for line in throughput_latency_chart(run.rows, api=api):
            sys.stdout.write(line + "\n") if not json else sys.stderr.write(line + "\n")
    _raise_failures(run, url_from_config)


def _given(ctx: typer.Context, name: str) -> bool:
    # By name: Typer ships its own copy of click, whose ParameterSource is not click's.
    return getattr(ctx.get_parameter_source(name), "name", None) not in (None, "DEFAULT")


def _api(ctx: typer.Context, api: str, endpoint: str | None) -> str:
    """--api, or the --endpoint of older command lines (the same choice, chat or completions)."""
    from spotinference.bench.apis import NAMES
    from spotinference.errors import InputError

    if endpoint is not None:
        if endpoint not in ("completions", "chat"):
            raise InputError(f"--endpoint {endpoint!r} is not one of: completions, chat (--api has more)")
        if _given(ctx, "api") and api != endpoint:
            raise InputError(f"--endpoint {endpoint} and --api {api} disagree: give --api alone")
        api = endpoint
    if api not in NAMES:
        raise InputError(f"--api {api!r} is not one of: {', '.join(NAMES)}")
    return api


def _raise_failures(run: BenchRun, url_from_config: bool) -> None:
    from spotinference.bench import BenchFailedError, check_failures

    try:
        check_failures(run)
    except BenchFailedError as exc:
        if url_from_config:
            exc.hint = ("the gateway's URL came from the config (gateway.host, gateway.port): is `spot serve` "
                        "running there? --base-url or OPENAI_BASE_URL names another")
        raise


class _progress:
    """A live rich progress bar on a terminal; one line per finished level otherwise."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self.live = None
        self.task = None

    def __enter__(self):  # noqa: ANN204
        if not self.quiet and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.live = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(),
                                 console=Console(stderr=True), transient=False)
            self.live.__enter__()
        return self.update

    def update(self, p) -> None:  # noqa: ANN001 - a BenchProgress
        if self.quiet:
            return
        description = f"[{p.level + 1}/{p.levels}] {p.label}" + (" (warm-up)" if p.phase == "warmup" else "")
        if self.live is None:
            if p.phase == "done":
                from spotinference.bench.apis import APIS

                kind = "output" if all(APIS[r["api"]].streamed for r in p.rows) else "input"
                thr = sum(r[f"{kind}_throughput"] for r in p.rows)
                sys.stderr.write(f"{description}: {p.done - p.failed} completed, {p.failed} failed, "
                                 f"{p.elapsed_s:.1f} s, {thr:.1f} {kind} tok/s\n")
                sys.stderr.flush()
            return
        if self.task is None or self.task[0] != p.level:
            self.task = (p.level, self.live.add_task(description, total=p.total, failed=0))
        self.live.update(self.task[1], description=description, completed=p.done, total=p.total, failed=p.failed)

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)


def _ms(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:,.2f}" if abs(value) < 10 else f"{value:,.1f}"


def _column(stat: str, name: str) -> str:
    return f"{name.upper().replace('E2EL', 'E2E')} {'p50' if stat == 'median' else stat}"


def _level(row: dict[str, Any]) -> str:
    return f"c={row['concurrency']}" if row.get("concurrency") is not None else f"{row['request_rate']}/s"


def _show_run(run: BenchRun) -> None:
    from spotinference.bench.apis import APIS

    meta, params = run.meta, run.parameters
    api = params["api"]
    generating = APIS[api].streamed
    where = f"node {meta['on_node']}" if meta.get("on_node") else ", ".join(params["targets"])
    title = (f"spot bench --api {api}: {params['model']} via {where}; {params['prompt_shape']} tokens; "
             f"{meta.get('engine_version') or 'engine version unknown'}" + (f"; {meta['gpu']}" if meta.get("gpu") else ""))
    goodput = params.get("goodput") is not None
    cost = any(r.get("projected_usd_per_mtok_output") is not None for r in run.rows)
    tokens = ["out tok/s", "total tok/s"] if generating else ["in tok/s"]
    columns = ["target", "level", "ok", "failed", "req/s", *tokens, "waiting max", "KV max"]
    columns += ["goodput req/s"] if goodput else []
    columns += ["$/M out (projection)"] if cost else []
    rows = []
    for r in run.rows:
        kv = r.get("engine_max_kv_cache_usage")
        figures = ([f"{r['output_throughput']:,.1f}", f"{r['total_token_throughput']:,.1f}"] if generating
                   else [f"{r['input_throughput']:,.1f}"])
        row = [r["target"], _level(r), r["completed"], r["failed"], f"{r['request_throughput']:.2f}", *figures,
               "" if r.get("engine_max_requests_waiting") is None else f"{r['engine_max_requests_waiting']:.0f}",
               "" if kv is None else f"{kv:.1%}"]
        row += [f"{r['request_goodput']:.2f}"] if goodput else []
        if cost:
            value = r.get("projected_usd_per_mtok_output")
            row.append("" if value is None else f"${value:,.2f}")
        rows.append(row)
    print_table(title + "; throughput (waiting, KV: the engine's /metrics)", columns, rows)
    # (statistic, figure) pairs of each latency table; a non-streamed API has only the whole request.
    if generating:
        latency = [("median", "ttft"), ("p95", "ttft"), ("p99", "ttft"), ("median", "tpot"), ("median", "itl"),
                   ("p99", "itl"), ("median", "e2el"), ("p99", "e2el")]
        added_latency = [("median", "ttft"), ("p95", "ttft"), ("p99", "ttft"), ("median", "itl"), ("p99", "itl"),
                         ("median", "e2el"), ("p95", "e2el"), ("p99", "e2el")]
        latency_title = "latency (ms)"
    else:
        latency = added_latency = [("mean", "e2el"), ("median", "e2el"), ("p95", "e2el"), ("p99", "e2el")]
        latency_title = (f"latency (ms): --api {api} is not streamed, so there is no TTFT, TPOT or ITL; "
                         "E2E is the whole request")
    print_table(latency_title, ["target", "level", *(_column(stat, name) for stat, name in latency)],
                [[r["target"], _level(r), *(_ms(r[f"{stat}_{name}_ms"]) for stat, name in latency)] for r in run.rows])
    added = [r for r in run.rows if "added_median_e2el_ms" in r]
    if added:
        print_table(
            "gateway's added latency (gateway − direct, same level, same load; ms)",
            ["level", *(_column(stat, name) for stat, name in added_latency)],
            [[_level(r), *(_ms(r[f"added_{stat}_{name}_ms"]) for stat, name in added_latency)] for r in added],
        )
    for r in run.rows:
        for reason, count in r["failure_reasons"].items():
            typer.echo(f"failed ({r['target']}, {_level(r)}): {count}× {reason}")
    if cost or (meta.get("tier") and generating):  # the projection is per output token
        rate = meta.get("usd_per_hour")
        typer.echo("$/M out (projection) is a PROJECTION AT FULL UTILISATION: the tier's current rate "
                   + (f"(${rate:.4f}/h, {meta.get('rate_note')}) " if rate is not None else f"(unknown: {meta.get('rate_note')}) ")
                   + "over the level's measured output throughput. It is not spend: `spot cost` reports the "
                   "invoice-true cost per million tokens actually served.")
    if run.stopped_reason:
        typer.echo(run.stopped_reason)
    if run.run_id is not None:
        typer.echo(f"saved as run {run.run_id} (`spot bench list`, `spot bench compare {run.run_id} RUN`)")


@app.command("list")
def list_(ctx: typer.Context, limit: Annotated[int, typer.Option("--limit", help="How many recent runs.")] = 50,
          json: JsonOption = False) -> None:
    """The saved benchmark runs, newest first."""
    from spotinference.bench.results import list_runs

    state: CliState = ctx.obj
    runs = list_runs(state.store(), limit)
    if json:
        print_json([r.to_json() for r in runs])
        return
    if not runs:
        typer.echo("no benchmark runs yet (run `spot bench`)")
        return
    print_table("benchmark runs (best tok/s: output, or input for embeddings)",
                ["run", "started (UTC)", "api", "model", "targets", "gpu, engine", "load", "prompt shape", "levels",
                 "requests", "best tok/s"],
                [(r.run_id, r.started_at.strftime("%Y-%m-%d %H:%M"), r.api, r.model,
                  r.targets + (f" on {r.on_node}" if r.on_node else f" ({r.tier})" if r.tier else ""),
                  ", ".join(x for x in (r.gpu, r.engine_version) if x), r.load, r.prompt_shape,
                  f"{r.levels}" + (" (stopped)" if r.stopped_reason else ""),
                  f"{r.completed} ok" + (f", {r.failed} failed" if r.failed else ""),
                  "" if r.best_output_throughput is None else f"{r.best_output_throughput:,.1f}") for r in runs])


@app.command("compare")
def compare(ctx: typer.Context, first: Annotated[int, typer.Argument(help="A run (see `spot bench list`).")],
            second: Annotated[int, typer.Argument(help="Another run, compared against the first.")],
            json: JsonOption = False) -> None:
    """Two runs side by side, level by level, with deltas (B − A)."""
    from spotinference.bench.results import compare_runs

    state: CliState = ctx.obj
    data = compare_runs(state.store(), first, second)
    if json:
        print_json(data)
        return
    for side in ("a", "b"):
        run = data[side]
        typer.echo(f"{side.upper()} = run {run['run_id']}: --api {run['api']}, {run['model']} via "
                   f"{run['on_node'] or run['targets']}, "
                   f"{run['prompt_shape']}, {run['engine_version'] or '?'}, {run['gpu'] or ''} "
                   f"({run['started_at']:%Y-%m-%d %H:%M})")
    if not data["same_api"]:
        typer.echo(f"A and B benchmarked different APIs ({data['a']['api']}, {data['b']['api']}): the deltas include "
                   "what each API costs, not only what changed in the engine")
    rows = []
    for level in data["levels"]:
        name = f"{level['target']} " + (f"c={level['concurrency']}" if level["concurrency"] is not None
                                         else f"{level['request_rate']}/s")
        for f in level["figures"]:
            def fmt(v: Any) -> str:
                return "—" if v is None else (f"{v:,}" if isinstance(v, int) else f"{v:,.2f}")
            rel = "" if f["relative"] is None else f" ({f['relative']:+.1%})"
            mark = "" if f["better"] is None else (" better" if f["better"] else " worse")
            rows.append([name, f["metric"], fmt(f["a"]), fmt(f["b"]),
                         ("" if f["delta"] is None else f"{f['delta']:+,.2f}") + rel + mark])
            name = ""
    print_table(f"run {first} (A) vs run {second} (B)", ["target, level", "metric", "A", "B", "Δ (B − A)"], rows)
