"""The slot lookup both shared key tables use (gateway/worker_columns.py::slot_offset): each key
gets one slot, every worker finds the same one, and a full table says so instead of sharing."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from spotinference.gateway.worker_columns import slot_offset

SLOTS, HEADER, SLOT_BYTES = 8, 16, 48


def _table(path: Path) -> tuple[mmap.mmap, int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, HEADER + SLOTS * SLOT_BYTES)
    return mmap.mmap(fd, HEADER + SLOTS * SLOT_BYTES), fd


def _claim(mapped: mmap.mmap, offset: int, name: bytes) -> None:
    mapped[offset:offset + len(name)] = name


def test_every_key_gets_its_own_slot_and_a_second_mapping_finds_the_same_one(tmp_path: Path) -> None:
    first, first_fd = _table(tmp_path / "t")
    second, second_fd = _table(tmp_path / "t")  # another worker's view of the same file
    keys = [f"key-{n}" for n in range(SLOTS)]  # enough to force collisions in 8 slots
    offsets = {k: slot_offset(first, first_fd, k, slots=SLOTS, header=HEADER, slot_bytes=SLOT_BYTES,
                              claim=_claim, table="test") for k in keys}
    assert len(set(offsets.values())) == SLOTS
    assert all(HEADER <= o < HEADER + SLOTS * SLOT_BYTES and (o - HEADER) % SLOT_BYTES == 0 for o in offsets.values())
    for key in keys:
        assert slot_offset(second, second_fd, key, slots=SLOTS, header=HEADER, slot_bytes=SLOT_BYTES,
                           claim=_claim, table="test") == offsets[key]


def test_a_full_table_refuses_a_new_key_by_name(tmp_path: Path) -> None:
    mapped, fd = _table(tmp_path / "t")
    for n in range(SLOTS):
        slot_offset(mapped, fd, f"key-{n}", slots=SLOTS, header=HEADER, slot_bytes=SLOT_BYTES, claim=_claim, table="key limits")
    with pytest.raises(RuntimeError, match=r"the key limits table is full \(8 keys\)"):
        slot_offset(mapped, fd, "one-too-many", slots=SLOTS, header=HEADER, slot_bytes=SLOT_BYTES, claim=_claim, table="key limits")
