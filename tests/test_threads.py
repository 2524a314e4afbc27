"""torch_threads: auto (serve_app/model/threads.py): one thread for a light model, more for a heavy
one, decided on the replica's inference thread when a model loads."""

from __future__ import annotations

import asyncio

import pytest
import torch
from pydantic import ValidationError

from serve_app.config import AppArgs
from serve_app.model import threads
from serve_app.model.deployment import FaceAttributeModel
from tests.artifacts import write_tiny_artifact

Replica = FaceAttributeModel.func_or_class


@pytest.fixture(scope="module")
def tiny_uri(tmp_path_factory) -> str:
    return write_tiny_artifact(str(tmp_path_factory.mktemp("store")), version="v1").uri


def serving_threads(uri: str, torch_threads) -> tuple[int, int]:
    """(threads the replica reports, threads its inference thread really runs with)."""

    async def run() -> tuple[int, int]:
        replica = Replica(device="cpu", torch_threads=torch_threads)
        await replica.reconfigure({"model_uri": uri})
        return replica._threads, await replica._inference.run(torch.get_num_threads)

    return asyncio.run(run())


def test_auto_keeps_one_thread_for_a_light_model(tiny_uri):
    assert serving_threads(tiny_uri, "auto") == (1, 1)


def test_auto_gives_a_heavy_model_two_threads(tiny_uri, monkeypatch):
    monkeypatch.setattr(threads, "AUTO_HEAVY_FORWARD_MS", 0.0)  # every model counts as heavy
    assert serving_threads(tiny_uri, "auto") == (2, 2)


def test_a_number_is_used_as_given(tiny_uri, monkeypatch):
    monkeypatch.setattr(threads, "AUTO_HEAVY_FORWARD_MS", 0.0)
    assert serving_threads(tiny_uri, 3) == (3, 3)


def test_config_accepts_auto_or_a_count():
    assert AppArgs(torch_threads="auto").torch_threads == "auto"
    assert AppArgs(torch_threads=2).torch_threads == 2
    for bad in (0, 300, "many"):
        with pytest.raises(ValidationError):
            AppArgs(torch_threads=bad)
