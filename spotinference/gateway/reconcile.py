"""The token log checked against the engine's own counters (vLLM's ``/metrics``).

vLLM counts every prefill and every generated token in ``vllm:prompt_tokens_total`` and
``vllm:generation_tokens_total``, aborted requests included. Between two scrapes of one engine
that only the gateway talks to, the tokens the gateway logged for that engine's model should
account for the engine's delta:

* generation: logged == engine for requests that finished; an aborted request's row holds the
  running totals vLLM sent before it noticed the client leave, so the engine may be a few
  tokens (about one per running choice) ahead;
* prompt: vLLM's usage counts a prompt once, the metric counts it once per choice (``n``), and
  a row whose prompt is unknown (NULL: aborted before the first chunk) counts nothing.

``Reconciliation`` says how many tokens the log does not account for, and how many rows are
unknown, so an operator can see whether a shortfall is explained.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..store import Store

PROMPT = "vllm:prompt_tokens_total"
GENERATION = "vllm:generation_tokens_total"


@dataclass(frozen=True)
class EngineTokens:
    """An engine's token counters at one scrape (summed over its engines, for one model)."""

    prompt_tokens: float
    generation_tokens: float


def engine_tokens(metrics_text: str, model: str | None = None) -> EngineTokens:
    """Read vLLM's token counters from its Prometheus text (``model`` None: every model)."""
    totals = {PROMPT: 0.0, GENERATION: 0.0}
    label = None if model is None else f'model_name="{model}"'
    for line in metrics_text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals and (label is None or label in line):
            totals[name] += float(line.rsplit(" ", 1)[1])
    return EngineTokens(totals[PROMPT], totals[GENERATION])


@dataclass(frozen=True)
class Reconciliation:
    engine_prompt_tokens: int  # the engine's delta
    engine_generation_tokens: int
    logged_prompt_tokens: int  # the token log's sums (NULLs left out)
    logged_completion_tokens: int
    requests: int
    unknown_prompt_rows: int
    unknown_completion_rows: int

    @property
    def unlogged_generation_tokens(self) -> int:
        """Tokens the engine generated that no row counts (aborts' last steps, unknown rows)."""
        return self.engine_generation_tokens - self.logged_completion_tokens

    @property
    def overlogged(self) -> bool:
        """The log counts more output than the engine made: never right."""
        return self.logged_completion_tokens > self.engine_generation_tokens

    def line(self) -> str:
        return (f"engine generated {self.engine_generation_tokens:,} tokens, the log counts "
                f"{self.logged_completion_tokens:,} ({self.unlogged_generation_tokens:+,} unlogged); "
                f"engine prefilled {self.engine_prompt_tokens:,}, the log counts {self.logged_prompt_tokens:,} "
                f"(a prompt counts once per choice in the engine); {self.requests} requests, "
                f"{self.unknown_prompt_rows} with unknown prompt tokens, "
                f"{self.unknown_completion_rows} with unknown completion tokens")


def reconcile(store: Store, before: EngineTokens, after: EngineTokens, *, model: str,
              since: datetime, until: datetime) -> Reconciliation:
    """Compare the rows for ``model`` that finished in [since, until) with the engine's delta."""
    with store.reading() as con:
        row = con.execute(
            "SELECT count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), "
            "count(*) FILTER (WHERE prompt_tokens IS NULL), count(*) FILTER (WHERE completion_tokens IS NULL) "
            "FROM requests WHERE model = ? AND finished_at >= ? AND finished_at < ?",
            [model, since, until],
        ).fetchone()
    requests, prompt, completion, unknown_prompt, unknown_completion = row
    return Reconciliation(
        engine_prompt_tokens=round(after.prompt_tokens - before.prompt_tokens),
        engine_generation_tokens=round(after.generation_tokens - before.generation_tokens),
        logged_prompt_tokens=int(prompt),
        logged_completion_tokens=int(completion),
        requests=int(requests),
        unknown_prompt_rows=int(unknown_prompt),
        unknown_completion_rows=int(unknown_completion),
    )


_MODEL_LABEL = re.compile(r'model_name="((?:[^"\\]|\\.)*)"')


def reconcile_since_engine_start(store: Store, metrics_text: str) -> dict[str, Reconciliation]:
    """Per model an engine serves: its counters since it started (``vllm:prompt_tokens_created``)
    against the log's rows for that model that finished since. Exact when this engine is the
    only one serving the model and only the gateway talks to it."""
    store.flush()
    started: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("vllm:prompt_tokens_created{"):
            match = _MODEL_LABEL.search(line)
            if match:
                started[match[1]] = float(line.rsplit(" ", 1)[1])
    zero = EngineTokens(0.0, 0.0)
    now = datetime.now(UTC)
    return {
        model: reconcile(store, zero, engine_tokens(metrics_text, model), model=model,
                         since=datetime.fromtimestamp(created, UTC), until=now)
        for model, created in started.items()
    }
