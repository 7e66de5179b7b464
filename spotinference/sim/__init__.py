"""The simulators: real servers that stand in for vLLM and for the GPU cloud.

``engine`` is a vLLM-compatible OpenAI server that generates deterministic tokens on a timing
model (see ``timing``) and reports usage and ``vllm:*`` metrics as vLLM does. Importing this
package is cheap; the server's dependencies load when it runs.
"""

from __future__ import annotations

from .timing import Timebase, TimingModel

__all__ = ["EngineConfig", "SimEngine", "Timebase", "TimingModel", "run", "serve"]


def __getattr__(name: str):  # noqa: ANN202 - lazy re-exports
    if name in ("EngineConfig", "SimEngine", "run", "serve"):
        from . import engine

        return getattr(engine, name)
    raise AttributeError(name)
