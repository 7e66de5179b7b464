"""`spot config show` and `spot config check`: the settings in effect, where each came from, secrets never shown."""

from __future__ import annotations

import json
from pathlib import Path

CONFIG = """
[gateway]
port = 8100

[providers.hs]
base_url = "https://infrahub.example/v1"
api_key_file = "{key_file}"

[providers.sim]
base_url = "http://127.0.0.1:8780/v1"
emulator = true

[tiers.big]
provider = "sim"
flavor = "sim-cpu-1"
environment = "sim-local"
model = "tiny-chat"
vllm.env = {{ HF_TOKEN = "{hf_token}", VLLM_CPU_KVCACHE_SPACE = "4" }}
"""
HF_TOKEN = "hf_toml-secret-16180"
FILE_SECRET = "hs-file-secret-31337"
ENV_SECRET = "sk-env-secret-27182"


def write_config(tmp_path: Path) -> Path:
    key_file = tmp_path / "hs.key"
    key_file.write_text(FILE_SECRET + "\n")
    path = Path("spot.toml")
    path.write_text(CONFIG.format(key_file=key_file, hf_token=HF_TOKEN))
    return path.resolve()


def lines_by_key(stdout: str) -> dict[str, str]:
    return {line.split(" = ", 1)[0]: line for line in stdout.splitlines() if " = " in line}


def test_show_says_where_each_value_came_from(spot, tmp_path: Path, home: Path) -> None:
    config = write_config(tmp_path)
    result = spot("config", "show", env={"SPOT_GATEWAY__HOST": "0.0.0.0"})
    assert result.returncode == 0, result.stderr
    assert f"config: {config} (from ./spot.toml)" in result.stdout
    lines = lines_by_key(result.stdout)
    assert lines["gateway.port"].startswith("gateway.port = 8100 ") and lines["gateway.port"].endswith(f"# {config}")
    assert lines["gateway.host"].endswith("# $SPOT_GATEWAY__HOST") and '"0.0.0.0"' in lines["gateway.host"]
    assert lines["gateway.workers"].startswith("gateway.workers = 1 ") and lines["gateway.workers"].endswith("# default")
    assert lines["home"].endswith("# $SPOT_HOME") and str(home) in lines["home"]
    assert lines["tiers.big.idle_timeout_s"].endswith("# default")
    assert lines["tiers.big.model"].endswith(f"# {config}")


def test_the_environment_wins_and_json_says_so(spot, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = spot("config", "show", "--json", env={"SPOT_GATEWAY__PORT": "9100", "SPOT_TIERS__BIG__MAX_NODES": "3"})
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["config"] == str(config) and data["config_from"] == "./spot.toml"
    by_key = {s["key"]: s for s in data["settings"]}
    assert by_key["gateway.port"] == {"key": "gateway.port", "value": 9100, "from": "env",
                                      "where": "$SPOT_GATEWAY__PORT", "secret": False}
    assert by_key["tiers.big.max_nodes"]["value"] == 3 and by_key["tiers.big.max_nodes"]["from"] == "env"
    assert by_key["providers.sim.emulator"] == {"key": "providers.sim.emulator", "value": True, "from": "file",
                                                "where": str(config), "secret": False}
    assert by_key["budget.scope"]["from"] == "default"


def test_a_tier_made_only_of_environment_variables_says_so(spot, tmp_path: Path) -> None:
    write_config(tmp_path)
    env = {f"SPOT_TIERS__EXTRA__{k}": v for k, v in
           {"PROVIDER": "sim", "FLAVOR": "sim-cpu-1", "ENVIRONMENT": "sim-local", "MODEL": "other-chat"}.items()}
    by_key = {s["key"]: s for s in json.loads(spot("config", "show", "--json", "tiers.extra", env=env).stdout)["settings"]}
    assert by_key["tiers.extra.model"]["where"] == "$SPOT_TIERS__EXTRA__MODEL"
    assert by_key["tiers.extra.name"]["from"] == "env" and by_key["tiers.extra.name"]["where"].startswith("$SPOT_TIERS__EXTRA__")
    assert by_key["tiers.extra.idle_timeout_s"]["from"] == "default"


def test_secrets_are_masked_and_their_source_named(spot, tmp_path: Path) -> None:
    write_config(tmp_path)
    env = {"SPOT_GATEWAY__OPERATOR_TOKEN": ENV_SECRET}
    text = spot("config", "show", env=env)
    as_json = spot("config", "show", "--json", env=env)
    for result in (text, as_json):
        assert result.returncode == 0, result.stderr
        assert ENV_SECRET not in result.stdout + result.stderr
        assert FILE_SECRET not in result.stdout + result.stderr
        assert HF_TOKEN not in result.stdout + result.stderr  # named like a secret, wherever it sits
    lines = lines_by_key(text.stdout)
    assert lines["gateway.operator_token"].startswith('gateway.operator_token = "***"')
    assert lines["gateway.operator_token"].endswith("# $SPOT_GATEWAY__OPERATOR_TOKEN")
    assert lines["providers.hs.api_key"].startswith('providers.hs.api_key = "***"')
    assert lines["providers.hs.api_key"].endswith(f"# {tmp_path / 'hs.key'} (providers.hs.api_key_file)")
    assert lines["ssh.key_passphrase"].startswith("ssh.key_passphrase = (not set)")
    assert lines["tiers.big.vllm.env.HF_TOKEN"].startswith('tiers.big.vllm.env.HF_TOKEN = "***"')
    assert lines["tiers.big.vllm.env.VLLM_CPU_KVCACHE_SPACE"].startswith('tiers.big.vllm.env.VLLM_CPU_KVCACHE_SPACE = "4"')
    assert lines["gateway.operator_token_file"].startswith("gateway.operator_token_file = (not set)")
    by_key = {s["key"]: s for s in json.loads(as_json.stdout)["settings"]}
    assert by_key["providers.hs.api_key"]["secret"] is True and by_key["providers.hs.api_key"]["from"] == "secret file"


def test_show_takes_a_key_prefix(spot, tmp_path: Path) -> None:
    write_config(tmp_path)
    result = spot("config", "show", "gateway.port")
    assert result.returncode == 0
    assert list(lines_by_key(result.stdout)) == ["gateway.port"]
    assert set(lines_by_key(spot("config", "show", "tiers.big").stdout)) >= {"tiers.big.model", "tiers.big.vllm.port"}
    missing = spot("config", "show", "gateway.prot")
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.startswith("error: no setting is named 'gateway.prot'") and len(missing.stderr.splitlines()) == 1


def test_show_on_the_embedded_default(spot) -> None:
    result = spot("config", "show", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["config_from"] == "embedded default"
    by_key = {s["key"]: s for s in data["settings"]}
    assert by_key["tiers.demo.model"]["from"] == "file" and by_key["tiers.demo.model"]["value"] == "tiny-chat"


def test_check_passes_on_a_good_config(spot, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = spot("config", "check", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["config"]["ok"] and str(config) in checks["config"]["detail"]
    assert checks["provider sim"]["ok"]
    assert spot("config", "check").returncode == 0


def test_check_and_show_refuse_a_bad_config_with_exit_2(spot) -> None:
    Path("spot.toml").write_text("[gateway]\nport = 99999\n")
    check = spot("config", "check")
    assert check.returncode == 2 and "gateway.port = 99999 is invalid" in check.stdout
    data = json.loads(spot("config", "check", "--json").stdout)
    assert data["ok"] is False and data["checks"][0]["name"] == "config"
    show = spot("config", "show")
    assert show.returncode == 2 and show.stdout == ""
    assert show.stderr.startswith("error: ") and "gateway.port = 99999 is invalid" in show.stderr
    assert len(show.stderr.splitlines()) == 1 and "Traceback" not in show.stderr
    env = spot("config", "check", "--json", env={"SPOT_GATEWAY__PORT": "nope"})
    [failed] = json.loads(env.stdout)["checks"]
    assert env.returncode == 2 and failed["detail"].startswith("environment variable SPOT_GATEWAY__PORT: ")
    assert failed["fix"] == "fix that environment variable"  # not the config file, which is fine


def test_check_reports_a_missing_provider_key_with_its_fix(spot) -> None:
    Path("spot.toml").write_text("""
[providers.hs]
base_url = "https://infrahub.example/v1"

[tiers.big]
provider = "hs"
flavor = "n3-H100x1"
environment = "CANADA-1"
model = "m"
""")
    result = spot("config", "check", "--json")
    assert result.returncode == 2
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["provider hs"]["ok"] is False and "SPOT_PROVIDERS__HS__API_KEY" in checks["provider hs"]["fix"]
