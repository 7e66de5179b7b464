-- Benchmark runs (`spot bench`): one row per run with its parameters as columns (what the run
-- measured: tier, model, GPU, engine version, prompt shape) and every option as given in
-- `parameters`; `results` is the list of per-(target, level) objects, with the same keys as
-- `spot bench --json` (vLLM's `vllm bench serve` names where they overlap).
CREATE TABLE bench_runs (
    run_id          INTEGER PRIMARY KEY,      -- 1, 2, 3 ...: what `spot bench compare` takes
    started_at      TIMESTAMPTZ NOT NULL,
    finished_at     TIMESTAMPTZ NOT NULL,
    tier            VARCHAR,                  -- the configured tier, when the run named one
    on_node         VARCHAR,                  -- the node the load generator ran on (--on-node)
    model           VARCHAR NOT NULL,
    gpu             VARCHAR,                  -- e.g. "2x H100-80G"
    engine_version  VARCHAR,                  -- the engine's /version
    targets         VARCHAR NOT NULL,         -- "gateway", "direct", "gateway,direct", "on-node"
    load            VARCHAR NOT NULL,         -- concurrency | rate
    prompt_shape    VARCHAR NOT NULL,         -- "~128 in / 256 out", "prompts from FILE / 256 out"
    usd_per_hour    DOUBLE,                   -- the tier's current rate, for the cost projection
    stopped_reason  VARCHAR,                  -- why the sweep ended early (saturation), or null
    parameters      JSON NOT NULL,
    results         JSON NOT NULL
);
