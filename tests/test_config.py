"""Settings: where the file comes from, env overrides, secrets, and what a bad config says."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotinference.config import load_settings
from spotinference.errors import ConfigError

MINIMAL = """
[gateway]
port = {port}

[providers.hs]
kind = "hyperstack"

[tiers.qwen]
provider = "hs"
flavor = "n3-H100x1"
environment = "default-CANADA-1"
capacity = "spot"
model = "/mnt/weights/qwen"
served_model_name = "qwen"
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_embedded_default_describes_a_local_fleet_with_a_fallback() -> None:
    settings, source = load_settings()
    assert source.path is None and source.how == "embedded default"
    assert set(settings.tiers) == {"demo", "demo-ondemand"}
    demo = settings.tiers["demo"]
    assert demo.name == "demo" and demo.capacity == "spot" and demo.fallback == "demo-ondemand"
    assert settings.providers[demo.provider].emulator
    # The fallback repeats the model; requests for it route to the primary tier.
    assert settings.tier_for_model("tiny-chat").name == "demo"
    assert settings.tier_for_model("no-such-model") is None


def test_config_file_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = write(Path("spot.toml"), MINIMAL.format(port=8101))
    assert load_settings()[0].gateway.port == 8101
    assert load_settings()[1].path == local.resolve()

    from_env = write(tmp_path / "env.toml", MINIMAL.format(port=8102))
    monkeypatch.setenv("SPOT_CONFIG", str(from_env))
    assert load_settings()[0].gateway.port == 8102

    flag = write(tmp_path / "flag.toml", MINIMAL.format(port=8103))
    settings, source = load_settings(flag)
    assert settings.gateway.port == 8103 and source.how == "--config"


def test_every_value_can_be_overridden_by_a_spot_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOT_GATEWAY__PORT", "9001")
    monkeypatch.setenv("SPOT_TIERS__DEMO__IDLE_TIMEOUT_S", "120")
    monkeypatch.setenv("SPOT_TIERS__DEMO__VLLM__MAX_MODEL_LEN", "256")
    monkeypatch.setenv("SPOT_HOME", "/tmp/elsewhere")
    settings, _ = load_settings()
    assert settings.gateway.port == 9001
    assert settings.tiers["demo"].idle_timeout_s == 120
    assert settings.tiers["demo"].vllm.max_model_len == 256
    assert settings.tiers["demo"].flavor == "sim-cpu-1"  # the rest of the tier still from the file
    assert settings.home == Path("/tmp/elsewhere")


def test_secret_from_environment_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    write(Path("spot.toml"), MINIMAL.format(port=8000))
    monkeypatch.setenv("SPOT_PROVIDERS__HS__API_KEY", "hs-live-key-123456")
    settings, _ = load_settings()
    key = settings.providers["hs"].api_key
    assert key is not None and key.get_secret_value() == "hs-live-key-123456"
    assert "hs-live-key-123456" not in repr(settings)
    assert "hs-live-key-123456" not in str(settings.model_dump())


def test_secret_from_a_file(tmp_path: Path) -> None:
    key_file = write(tmp_path / "hs.key", "hs-file-key-abcdef\n")
    write(Path("spot.toml"), MINIMAL.format(port=8000).replace('kind = "hyperstack"', f'kind = "hyperstack"\napi_key_file = "{key_file}"'))
    key = load_settings()[0].providers["hs"].api_key
    assert key is not None and key.get_secret_value() == "hs-file-key-abcdef"


def test_a_secret_written_in_the_config_file_is_refused_without_echoing_it() -> None:
    write(Path("spot.toml"), MINIMAL.format(port=8000).replace('kind = "hyperstack"', 'kind = "hyperstack"\napi_key = "hs-plain-999"'))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "providers.hs.api_key" in message and "plain text" in message
    assert "SPOT_PROVIDERS__HS__API_KEY" in (caught.value.hint or "")
    assert "hs-plain-999" not in message + (caught.value.hint or "")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (('capacity = "spot"', 'capacity = "spotty"'), ["spot.toml", "tiers.qwen.capacity", "'spotty'", "expected 'spot' or 'on-demand'"]),
        (("port = 8000", "port = 70000"), ["spot.toml", "gateway.port", "70000", "less than or equal to 65535"]),
        (('flavor = "n3-H100x1"', 'flavour = "n3-H100x1"'), ["spot.toml", "tiers.qwen.flavor is required"]),
        (('capacity = "spot"', 'capacity = "spot"\nfallback = "nope"'), ["spot.toml", "tiers.qwen.fallback = 'nope'", "not a configured tier"]),
        (('provider = "hs"', 'provider = "aws"'), ["tiers.qwen.provider = 'aws'", "expected one of: hs"]),
        (("[gateway]", "[gateway]\nwrokers = 2"), ["unknown key 'gateway.wrokers'"]),
        (("port = 8000", "port = "), ["spot.toml", "not valid TOML", "line"]),
    ],
)
def test_a_bad_config_names_file_key_value_and_expectation(edit: tuple[str, str], expected: list[str]) -> None:
    write(Path("spot.toml"), MINIMAL.format(port=8000).replace(*edit))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    for fragment in expected:
        assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOT_TIERS__DEMO__MIN_NODES", "-1")
    with pytest.raises(ConfigError, match=r"environment variable SPOT_TIERS__DEMO__MIN_NODES: tiers\.demo\.min_nodes = '-1'"):
        load_settings()


def test_fallback_cycles_and_node_bounds_are_refused() -> None:
    cyclic = MINIMAL.format(port=8000) + """
[tiers.qwen-od]
provider = "hs"
flavor = "n3-H100x1"
environment = "default-CANADA-1"
model = "/mnt/weights/qwen"
served_model_name = "qwen"
fallback = "qwen"
"""
    write(Path("spot.toml"), cyclic.replace('capacity = "spot"', 'capacity = "spot"\nfallback = "qwen-od"'))
    with pytest.raises(ConfigError, match="cycle: qwen -> qwen-od -> qwen"):
        load_settings()
    write(Path("spot.toml"), MINIMAL.format(port=8000) + "min_nodes = 3\nmax_nodes = 2\n")
    with pytest.raises(ConfigError, match=r"min_nodes \(3\) must not exceed max_nodes \(2\)"):
        load_settings()


def test_two_primary_tiers_for_one_model_are_refused() -> None:
    text = MINIMAL.format(port=8000) + """
[tiers.qwen2]
provider = "hs"
flavor = "n3-A100x1"
environment = "default-CANADA-1"
model = "/mnt/weights/qwen"
served_model_name = "qwen"
"""
    write(Path("spot.toml"), text)
    with pytest.raises(ConfigError, match="model 'qwen' is served by two tiers"):
        load_settings()


def test_a_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nowhere\.toml \(from --config\) does not exist"):
        load_settings(tmp_path / "nowhere.toml")


def test_the_hyperstack_example_is_a_valid_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from spotinference.config import embedded_config_text

    write(Path("spot.toml"), embedded_config_text("hyperstack.example.toml"))
    settings, _ = load_settings()
    spot_tier = settings.tier_for_model("llama-3.3-70b-instruct")
    assert spot_tier.name == "llama70-spot" and spot_tier.capacity == "spot"
    assert spot_tier.vllm.quantization == "fp8" and spot_tier.vllm.tensor_parallel_size == 2
    assert settings.tiers[spot_tier.fallback].capacity == "on-demand"
    assert settings.tiers["qwen72-a100"].vllm.quantization == "awq_marlin"
    assert all(t.weights_volume for t in settings.tiers.values())
    assert settings.providers["hyperstack"].api_key is None
