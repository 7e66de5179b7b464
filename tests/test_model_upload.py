"""The bootstrap's model upload (nodes/model_upload.py) through a real transport on this machine:
complete or absent, uploaded once, swapped in whole when the source changes. The full-volume
case, over SSH onto a real ext4 volume, is in test_real_node_drills.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spotinference.errors import InputError
from spotinference.nodes.errors import NodeError
from spotinference.nodes.local import LocalTransport
from spotinference.nodes.model_upload import MARKER, ModelUpload


def make_source(root: Path) -> Path:
    source = root / "source"
    (source / "sub").mkdir(parents=True)
    (source / "config.json").write_text('{"a": 1}')
    (source / "sub" / "weights.bin").write_bytes(os.urandom(10_000))
    return source


def upload(root: Path, source: Path) -> bool:
    return ModelUpload(LocalTransport("local-node"), source=source, target=str(root / "weights" / "models" / "m"),
                       weights_dir=str(root / "weights"), device="/dev/vdb", as_root=False).run()


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_the_model_is_uploaded_once_whole_and_swapped_in_whole_when_its_source_changes(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    source = make_source(tmp_path)
    target = tmp_path / "weights" / "models" / "m"
    assert upload(tmp_path, source) is True
    uploaded = tree(target)
    assert {k: v for k, v in uploaded.items() if k != MARKER} == tree(source)
    assert sorted(p.name for p in target.parent.iterdir()) == ["m"]  # no partial or old copy left
    assert upload(tmp_path, source) is False  # the same source: nothing to do
    assert tree(target) == uploaded

    # an interrupted run's leftovers are neither used nor kept; a changed source is uploaded again
    (target.parent / "m.spot-partial").mkdir()
    (target.parent / "m.spot-partial" / "junk").write_text("half a shard")
    (source / "config.json").write_text('{"a": 2}')
    assert upload(tmp_path, source) is True
    assert (target / "config.json").read_text() == '{"a": 2}' and not (target / "junk").exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["m"]


def test_a_directory_spot_did_not_upload_is_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "weights" / "models" / "m").mkdir(parents=True)
    (tmp_path / "weights" / "models" / "m" / "theirs").write_text("the operator's")
    with pytest.raises(NodeError) as caught:
        upload(tmp_path, make_source(tmp_path))
    assert "models/m exists and spot did not upload it" in str(caught.value) and "\n" not in str(caught.value)
    assert (tmp_path / "weights" / "models" / "m" / "theirs").read_text() == "the operator's"


def test_a_missing_source_directory_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    with pytest.raises(InputError, match="is not a directory on this machine"):
        upload(tmp_path, tmp_path / "nowhere")


def test_model_upload_without_a_path_on_the_weights_volume_is_refused_in_one_line(tmp_path: Path, home: Path) -> None:
    from tests.conftest import run_spot
    from tests.fleet_config import sim_tier, write_fleet_config

    write_fleet_config("http://127.0.0.1:9/v1", {"demo": sim_tier(engine="vllm", model="org/hub-model",
                                                                   model_upload=str(tmp_path))},
                       extra="[budget]\nenforce = false\n")
    result = run_spot("status")  # any command that reads the config
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "model_upload needs a weights_volume and a model path under /mnt/weights/" in line, line
    assert "'org/hub-model'" in line, line
