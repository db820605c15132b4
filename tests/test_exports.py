"""Exports (``final/``, ``best/``: the backends' ``save_pretrained``) are written like checkpoints:
in a temporary sibling folder, every file fsynced, then swapped in.  A write that fails half-way
leaves the previous export byte for byte and no partial folder beside it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from rlkit.config import load_config
from rlkit.backends.single import SingleBackend
from rlkit.models import load_tokenizer


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class FailingTokenizer:
    """Writes part of its files, then fails (a full disk, a killed NFS mount, ...)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def save_pretrained(self, folder):
        Path(folder, "tokenizer.json").write_text("{\"half\": ")
        raise OSError(28, "No space left on device")


def backend_for(tiny_model: str, *extra: str) -> SingleBackend:
    return SingleBackend(load_config(None, tiny_overrides(tiny_model) + list(extra)), 10)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_failed_export_keeps_the_previous_one(lora, tiny_model, tmp_path, one_thread):
    backend = backend_for(tiny_model, *(["model.lora.r=4"] if lora else []))
    tokenizer = load_tokenizer(tiny_model)
    final = tmp_path / "run" / "final"
    backend.save_pretrained(str(final), tokenizer)
    before = snapshot(final)
    assert "model.safetensors" in before and ("adapter/adapter_model.safetensors" in before) == lora
    killed = final.with_name(".tmp-final-0123abcd")  # left by a process killed while exporting
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"partial")
    with torch.no_grad():  # a later export has other weights
        for p in backend.model.parameters():
            if p.requires_grad:
                p.add_(0.5)

    with pytest.raises(OSError, match="No space left"):
        backend.save_pretrained(str(final), FailingTokenizer(tokenizer))
    assert snapshot(final) == before
    assert sorted(os.listdir(final.parent)) == ["final"]  # no partial folder, the old leftover gone

    backend.save_pretrained(str(final), tokenizer)
    after = snapshot(final)
    assert after.keys() == before.keys() and after["model.safetensors"] != before["model.safetensors"]
    assert sorted(os.listdir(final.parent)) == ["final"]


def test_export_files_and_folders_are_fsynced(tiny_model, tmp_path, one_thread, monkeypatch):
    """Every file and folder of the export, and the folder holding it (the rename), went through
    ``os.fsync`` (identified by inode, which the renames keep)."""
    backend = backend_for(tiny_model, "model.lora.r=4")
    tokenizer = load_tokenizer(tiny_model)
    final = tmp_path / "final"
    backend.save_pretrained(str(final), tokenizer)  # the second export replaces the first
    synced: set[tuple[int, int]] = set()
    real_fsync = os.fsync

    def fsync(fd):
        st = os.fstat(fd)
        synced.add((st.st_dev, st.st_ino))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    backend.save_pretrained(str(final), tokenizer)
    paths = [final, tmp_path, *final.rglob("*")]
    assert any(p.name == "adapter_model.safetensors" for p in paths)
    missing = [str(p) for p in paths if (p.stat().st_dev, p.stat().st_ino) not in synced]
    assert not missing, missing


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_swap_in_replaces_a_folder_and_leaves_nothing_else(exchange, tmp_path, monkeypatch):
    """Both ways of replacing an existing folder (the second where Linux' atomic exchange is
    unavailable, e.g. on some network file systems) end with the new content alone."""
    import rlkit.checkpoint as checkpoint

    if not exchange:
        monkeypatch.setattr(checkpoint, "_exchange", lambda a, b: False)
    for content in ("old", "new"):
        with checkpoint.atomic_folder(tmp_path / "final") as tmp:
            (tmp / "weights").write_text(content)
            (tmp / "sub").mkdir()
            (tmp / "sub" / "file").write_text(content)
    assert sorted(os.listdir(tmp_path)) == ["final"]
    assert snapshot(tmp_path / "final") == {"weights": b"new", "sub/file": b"new"}


def test_extra_files_join_the_same_export(tiny_model, tmp_path, one_thread):
    """``best.json`` is written inside the atomic export: a failed export leaves the old pair."""
    backend = backend_for(tiny_model)
    tokenizer = load_tokenizer(tiny_model)
    best = tmp_path / "best"
    backend.save_pretrained(str(best), tokenizer, extra_files={"best.json": '{"step": 1}'})
    assert (best / "best.json").read_text() == '{"step": 1}'
    with pytest.raises(OSError):
        backend.save_pretrained(str(best), FailingTokenizer(tokenizer), extra_files={"best.json": '{"step": 2}'})
    assert (best / "best.json").read_text() == '{"step": 1}'
