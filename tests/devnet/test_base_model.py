"""The demo base model's fetch refuses what is not the pinned wheel, and a finished directory is reused as is."""

import json

import pytest

from openlora.devnet import base_model as bm


def test_a_wheel_with_another_digest_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    fake = tmp_path / bm.WHEEL_FILE
    fake.write_bytes(b"not the wheel")
    monkeypatch.setenv("OPENLORA_BASE_WHEEL", str(fake))
    with pytest.raises(bm.BaseModelError, match="is not the pinned"):
        bm.ensure_base_model(tmp_path / "cache", quiet=True)
    assert not (tmp_path / "cache" / "smollm2-135m-instruct").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # the temporary directory is gone too


def test_a_missing_wheel_file_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENLORA_BASE_WHEEL", str(tmp_path / "nope.whl"))
    with pytest.raises(bm.BaseModelError, match="no such file"):
        bm.ensure_base_model(tmp_path / "cache", quiet=True)


def test_a_ready_directory_is_returned_without_fetching(tmp_path, monkeypatch):
    d = tmp_path / "cache" / "smollm2-135m-instruct"
    d.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (d / name).write_text("{}")
    (d / bm.MARKER).write_text(json.dumps({"name": bm.NAME}))
    monkeypatch.setenv("OPENLORA_BASE_WHEEL", str(tmp_path / "absent.whl"))  # would fail if it were read
    assert bm.ensure_base_model(tmp_path / "cache", quiet=True) == d
