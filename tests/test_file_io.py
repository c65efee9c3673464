"""Atomic writes: a failure part-way leaves the old file whole and no temporary behind."""

import json
import os

import numpy as np
import pytest

from dental_d2.file_io import atomic_write, write_image, write_json


def test_atomic_write_replaces_on_success(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text('{"old": 1}')
    write_json(target, {"new": 2})
    assert json.loads(target.read_text()) == {"new": 2}
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "report.html"
    target.write_text("old report")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write("half of a new rep")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old report"
    assert os.listdir(tmp_path) == ["report.html"]


def test_atomic_write_keeps_old_file_when_serialisation_fails(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text('{"old": 1}')
    with pytest.raises(ValueError):
        write_json(target, {"ap": float("nan")}, allow_nan=False)
    assert json.loads(target.read_text()) == {"old": 1}
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_atomic_write_gives_umask_permissions(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {})
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_write_image_round_trip_and_unknown_extension(tmp_path):
    import cv2

    image = np.zeros((8, 10, 3), dtype=np.uint8)
    image[:, :5] = (255, 0, 0)
    assert write_image(tmp_path / "a.png", image)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "a.png")), image)
    assert not write_image(tmp_path / "a.unknown", image)
    assert sorted(os.listdir(tmp_path)) == ["a.png"]
