"""A codec defined and registered by this module alone, as a plugin would, goes through the whole
of logitcache: dumped (images and tokens), read back, verified, described, and trained from with
``--loss kl``, with no logitcache file knowing its name."""

from pathlib import Path

import numpy as np
import pytest
import torch

from logitcache.codecs import ArraySpec, SparseCodec, TopKTargets, register_codec, unregister_codec
from logitcache.codecs.codec_interface import index_dtype, logsumexp
from logitcache.lm import TokenStoreDataset, distillation_loss, teacher_of
from logitcache.store import open_store, verify_store
from logitcache.store_info import describe_store, format_description
from logitcache.train import TrainConfig, train
from tests.conftest import invoke, make_store
from tests.codecs.test_codec_registry import check_codec_contract

HAMLET = Path(__file__).resolve().parents[2] / "data" / "text" / "shakespeare" / "hamlet.md"


class Top1Codec(SparseCodec):
    """The most probable class, its log-probability (float16) and the log of the rest of the mass
    (float32, one tail bucket): 7 bytes a row, trained from as ``topk:1`` targets."""

    name = "top1"
    description = "the most probable class and its log-probability, the rest as one bucket"
    target_type = TopKTargets
    mass_note = "the rest as one bucket"

    def __init__(self, num_classes: int | None = None):
        self.num_classes, dtype = num_classes, index_dtype(num_classes)
        self.arrays = {"indices": ArraySpec(dtype, True, int(np.iinfo(dtype).max), width=1),
                       "logprobs": ArraySpec("float16", True, float("nan"), width=1),
                       "tail": ArraySpec("float32", False, float("nan"))}

    def for_classes(self, num_classes):
        return Top1Codec(num_classes)

    def encode(self, logits):
        wide = logits.astype(np.float64)
        best = wide.argmax(axis=1)[:, None]  # ties: the lower index, as top_classes ranks them
        norm = logsumexp(wide)
        rest = wide.copy()
        np.put_along_axis(rest, best, -np.inf, axis=1)
        return {"indices": best.astype(self.arrays["indices"].dtype),
                "logprobs": (np.take_along_axis(wide, best, 1) - norm[:, None]).astype(np.float16),
                "tail": (logsumexp(rest) - norm).astype(np.float32)}

    def decode(self, stored):
        best = stored["indices"][:, 0].astype(np.int64)
        spread = stored["tail"].astype(np.float32) - np.float32(np.log(self.num_classes - 1))
        dense = np.repeat(spread[:, None], self.num_classes, axis=1)
        written = best < self.num_classes  # unwritten rows hold the index fill value
        dense[np.flatnonzero(written), best[written]] = stored["logprobs"][written, 0].astype(np.float32)
        dense[~written] = np.nan
        return dense

    def stored_mass(self, stored):
        return np.exp(stored["logprobs"][:, 0].astype(np.float64))

    def top_classes(self, stored, k):
        return stored["indices"][:, :k].astype(np.int64)

    def sparse_targets(self, stored):
        return {"indices": stored["indices"].astype(np.int64), "logprobs": stored["logprobs"].astype(np.float32),
                "tail": stored["tail"].astype(np.float32)}


@pytest.fixture(scope="module", autouse=True)
def top1_registered():
    register_codec(Top1Codec())
    yield
    unregister_codec("top1")


def test_the_plugin_keeps_the_codec_contract():
    check_codec_contract("top1")


def test_an_image_store_in_the_plugin_codec_dumps_verifies_and_trains(tmp_path, digits_store):
    store = make_store(tmp_path / "top1.zarr", codec="top1")
    teacher = open_store(store).teacher()
    exact = open_store(digits_store).teacher().read(0, teacher.num_samples)  # the same teacher, fp32
    targets = teacher.read_targets(0, teacher.num_samples)
    assert teacher.codec.name == "top1" and np.array_equal(targets["indices"][:, 0], exact.argmax(1))
    np.testing.assert_allclose(targets["logprobs"][:, 0], torch.log_softmax(torch.from_numpy(exact), 1).max(1).values,
                               atol=1e-2)
    assert verify_store(store).ok
    described = format_description(describe_store(store))
    assert Top1Codec.description in described and "(the rest as one bucket)" in described
    summary = train(TrainConfig(out=str(tmp_path / "run"), student="mlp:hidden=8", dataset="digits@train",
                                store=str(store), loss="kl", epochs=1, progress=False), log=lambda *_: None)
    assert summary.last["train_kd"] > 0 and np.isfinite(summary.last["train_loss"])


def test_a_token_store_in_the_plugin_codec_dumps_and_distils(tmp_path):
    text = tmp_path / "hamlet-start.md"
    text.write_text(HAMLET.read_text()[:6_000])
    store = tmp_path / "tokens.zarr"
    result = invoke("dump", store, "--teacher", "tests.factories:tiny_lm", "--dataset", f"text:{text}",
                    "--tokenizer", "bytes", "--seq-len", "64", "--codec", "top1", "--no-progress")
    assert result.exit_code == 0, result.output
    assert verify_store(store).ok
    batch = TokenStoreDataset(store).batch([0, 1])
    assert batch["teacher_indices"].shape == (2, 64, 1) and isinstance(teacher_of(batch), TopKTargets)
    loss = distillation_loss(torch.zeros(2, 64, open_store(store).vocab_size), batch)
    assert torch.isfinite(loss) and loss > 0
