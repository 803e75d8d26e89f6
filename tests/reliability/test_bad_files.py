"""Bad files on disk: a data set file with the wrong checksum is refused before it is used;
a checkpoint that is corrupt, truncated or a pickle carrying code is refused without running
any of that code, with a message that says which file and what to do.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import socket
import struct

import numpy as np
import pytest
import torch

from warehouse.layout import Layout
from workers import downloads
from workers.checkpoint_io import TrialCheckpoints
from workers.config import DatasetConfig, ModelConfig, TrialConfig
from workers.data import load_dataset
from workers.downloads import ChecksumError
from workers.train import run_trial

MNIST_PARTS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _idx(arr: np.ndarray) -> bytes:
    head = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.tobytes()


def _closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch):
    """A data_dir with small MNIST-format files whose md5s the registry knows (and no
    network: mirrors point at a closed local port)."""
    rng = np.random.default_rng(0)
    arrays = (
        rng.integers(0, 256, (60, 28, 28), dtype=np.uint8),
        (np.arange(60) % 10).astype(np.uint8),
        rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        (np.arange(20) % 10).astype(np.uint8),
    )
    d = tmp_path / "data" / "mnist"
    d.mkdir(parents=True)
    md5 = {}
    for part, arr in zip(MNIST_PARTS, arrays, strict=True):
        blob = gzip.compress(_idx(arr), mtime=0)
        (d / f"{part}.gz").write_bytes(blob)
        md5[f"{part}.gz"] = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    spec = dataclasses.replace(
        downloads.REGISTRY["mnist"], md5={**downloads.REGISTRY["mnist"].md5, **md5},
        mirrors=(_closed_port_url(),),
    )  # fmt: skip
    monkeypatch.setitem(downloads.REGISTRY, "mnist", spec)
    return d


def test_dataset_file_with_a_wrong_checksum_is_refused(fake_mnist):
    cfg = DatasetConfig(name="mnist")
    data = load_dataset(cfg, "cpu", str(fake_mnist.parent))  # the genuine files load
    assert data.n_train == 60 and data.source["files"]
    victim = fake_mnist / "train-labels-idx1-ubyte.gz"
    blob = bytearray(victim.read_bytes())
    blob[-5] ^= 0xFF  # one flipped byte in a still well-formed-looking file
    victim.write_bytes(bytes(blob))
    with pytest.raises(ChecksumError) as info:
        load_dataset(cfg, "cpu", str(fake_mnist.parent))
    msg = str(info.value)
    assert str(victim) in msg and "checksum mismatch" in msg and "delete it" in msg
    assert victim.exists(), "a local file is refused, not deleted"
    # Through a trial: recorded as failed with that message; nothing trained on bad data.
    trial = TrialConfig(dataset=cfg, model=ModelConfig(name="mlp", hidden=[4]), max_epochs=1)
    result = run_trial(trial, device="cpu", data_dir=str(fake_mnist.parent))
    assert result.status == "failed" and "ChecksumError: checksum mismatch" in result.error
    assert result.epochs == []


class _Payload:
    """A pickle that creates a file when it is unpickled (what an attacker would ship)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _tiny_trial() -> TrialConfig:
    return TrialConfig(
        dataset=DatasetConfig(name="digits"),
        model=ModelConfig(name="mlp", hidden=[4]),
        batch_size=256,
        max_epochs=2,
    )


def _malicious(container: str, marker) -> bytes:
    state = {"model": _Payload(str(marker))}
    if container == "raw pickle":
        return pickle.dumps(state, protocol=2)
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
def test_checkpoint_carrying_code_is_refused_without_running_it(tmp_path, container):
    # The payload is live: unpickled without restrictions, it runs (here: creates a file).
    proof = tmp_path / "proof"
    blob = _malicious(container, proof)
    if container == "raw pickle":
        opened = pickle.loads(blob)
    else:
        opened = torch.load(io.BytesIO(blob), weights_only=False)
    opened["model"].close()
    assert proof.exists()

    marker = tmp_path / "PWNED"
    blob = _malicious(container, marker)
    cfg = _tiny_trial()
    ckpt = TrialCheckpoints(Layout.open(tmp_path / "runs"), "bad", cfg.trial_id)
    ckpt.layout.put_bytes(ckpt.path("resume"), blob)
    with pytest.raises(ValueError) as info:
        ckpt.load("resume")
    assert ckpt.path("resume") in str(info.value)
    assert "corrupt or not a plain tensor file" in str(info.value) and "delete it" in str(
        info.value
    )
    assert not marker.exists(), "the pickle's code ran"
    # A trial resuming from it fails with that message, and still runs none of its code.
    result = run_trial(cfg, device="cpu", checkpoints=ckpt)
    assert result.status == "failed" and "corrupt or not a plain tensor file" in result.error
    assert not marker.exists()


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    cfg = _tiny_trial()
    ckpt = TrialCheckpoints(Layout.open(tmp_path / "runs"), "bad", cfg.trial_id)
    assert run_trial(cfg, device="cpu", checkpoints=ckpt).status == "completed"
    blob = ckpt.layout.get_bytes(ckpt.path("final"))
    assert ckpt.load("final") is not None  # a whole checkpoint loads
    for cut in (len(blob) // 2, 10, 0):
        ckpt.layout.put_bytes(ckpt.path("final"), blob[:cut])
        with pytest.raises(ValueError) as info:
            ckpt.load("final")
        msg = str(info.value)
        assert msg.startswith(f"checkpoint {ckpt.path('final')} is corrupt"), msg
        assert "delete it to start the trial from scratch" in msg
    assert os.path.getsize(ckpt.path("final")) == 0
