"""Metric arithmetic of eval/: Frechet distance/FID, BLEU, CIDEr-D, classifier scores, protocols."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval.caption_metrics import bleu, cider, cider_per_caption
from eval.classifier import SmallCNN, multilabel_scores
from eval.fid import extract_features, frechet_distance
from eval.inception_fid import InceptionPool3, build_fid_inception, load_fid_inception
from eval.protocol import load_protocol
from eval.stories_io import EvalInputError


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    b = rng.normal(size=(4000, 3)) * 2.0 + 1.0
    # closed form from the sample moments: |mu_a - mu_b|^2 + sum(var_a + var_b - 2 sqrt(var_a var_b))
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum()
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    assert np.allclose(cov_a - np.diag(np.diag(cov_a)), 0, atol=0.1)
    value = frechet_distance(a, b)
    approx = expected + sum(np.diag(cov_a) + np.diag(cov_b) - 2 * np.sqrt(np.diag(cov_a) * np.diag(cov_b)))
    assert value == pytest.approx(approx, rel=0.02)
    assert value == pytest.approx(3 * 1.0 + 3 * (1 + 4 - 4), rel=0.1)  # population values


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise():
    # the same code path as FID (extract_features -> frechet_distance) on a cheap random network;
    # the Inception forward itself is checked on two frames below (CPU time on 299 px frames)
    torch.manual_seed(0)
    network = SmallCNN().eval()
    frames = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8))
              for i in range(24)]
    features = extract_features(network, frames, batch_size=8, device="cpu")
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
    distances = []
    for sigma in (10, 40, 120):
        noisy = [Image.fromarray(np.clip(np.asarray(frame, dtype=np.float64)
                                         + np.random.default_rng(7).normal(0, sigma, (32, 32, 3)), 0, 255)
                                 .astype(np.uint8)) for frame in frames]
        distances.append(frechet_distance(features, extract_features(network, noisy, 8, "cpu")))
    assert 0 < distances[0] < distances[1] < distances[2]


def test_fid_inception_gives_pool3_features():
    torch.manual_seed(0)
    network = InceptionPool3(build_fid_inception().eval())
    images = torch.rand(2, 3, 64, 48)  # any size: the network resizes to 299 itself
    features = network(images)
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
    assert (features >= 0).all()  # pool3 follows a ReLU


def test_fid_weights_missing_names_the_file_and_how_to_get_it(tmp_path):
    missing = tmp_path / "pretrained" / "pt_inception-2015-12-05-6726825d.pth"
    with pytest.raises(EvalInputError, match=r"(?s)pt_inception-2015-12-05-6726825d\.pth.*wget -O"):
        load_fid_inception(missing)


def test_fid_inception_loads_its_own_state_dict_strictly(tmp_path):
    path = tmp_path / "weights.pth"
    net = build_fid_inception()
    assert net.fc.out_features == 1008  # the TF graph's 1008 classes, as in pytorch-fid's file
    torch.save(net.state_dict(), path)
    assert isinstance(load_fid_inception(path), InceptionPool3)


def test_bleu_matches_hand_computed_values():
    # candidate "the cat sat" vs reference "the cat sat on": every n-gram matches (p1 = p2 = p3 = 1),
    # brevity penalty exp(1 - 4/3); no 4-gram exists, so BLEU-4 is smoothed towards 0.
    scores = bleu(["the cat sat"], [["the cat sat on"]])
    assert scores["bleu1"] == pytest.approx(math.exp(1 - 4 / 3), rel=1e-6)
    assert scores["bleu3"] == pytest.approx(math.exp(1 - 4 / 3), rel=1e-6)
    assert scores["bleu4"] < 0.05
    # two candidates, corpus level: "a b c d" vs "a b c e" (p1 3/4, p2 2/3) and "x y" vs "x y" (1, 1):
    # p1 = 5/6, p2 = 3/4 over the corpus, lengths 6 = 6 (no penalty) -> BLEU-2 = sqrt(5/6 * 3/4)
    scores = bleu(["A b, c d.", "x y"], [["a b c e"], ["x y"]])
    assert scores["bleu1"] == pytest.approx(5 / 6, rel=1e-6)
    assert scores["bleu2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 4), rel=1e-6)


def test_bleu_argument_order_matters():
    # a short candidate against a long reference is penalised; swapped, it is not
    short, long = "the cat", "the cat sat on the mat"
    assert bleu([short], [[long]])["bleu1"] < bleu([long], [[short]])["bleu1"] * 1.01
    assert bleu([short], [[long]])["bleu1"] == pytest.approx(math.exp(1 - 6 / 2), rel=1e-6)
    assert bleu([long], [[short]])["bleu1"] == pytest.approx(2 / 6, rel=1e-6)


def test_cider_matches_hand_computed_values():
    # two images, ref_len = log 2; every n-gram of the references has df 1, so idf weights are log 2.
    # image 1: "a b" vs "a b": unigram and bigram cosines 1, no 3/4-grams -> 10 * (1 + 1 + 0 + 0) / 4 = 5
    # image 2: "c e" vs "c d": unigram cosine (log2^2) / (sqrt2 log2)^2 = 0.5 -> 10 * 0.5 / 4 = 1.25
    assert cider_per_caption(["a b", "c e"], [["a b"], ["c d"]]) == pytest.approx([5.0, 1.25])
    assert cider(["a b", "c e"], [["a b"], ["c d"]]) == pytest.approx(3.125)


def test_caption_metrics_reject_mismatched_inputs():
    with pytest.raises(ValueError, match="2 candidates but 1 reference"):
        bleu(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match=r"references\[0\]"):
        cider(["a"], ["a"])


def test_multilabel_scores_exact_match_and_micro_f1():
    logits = torch.tensor([[5.0, -5.0, 5.0], [5.0, 5.0, -5.0], [-5.0, -5.0, -5.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    scores = multilabel_scores(logits, targets)
    assert scores["acc"] == pytest.approx(1 / 3)  # only frame 0 is an exact match
    # TP 3, FP 1, FN 1 -> 2*3 / (6 + 1 + 1)
    assert scores["f1"] == pytest.approx(6 / 8)


def test_protocol_base_chain_overrides_and_unknown_keys(tmp_path):
    protocol = load_protocol("configs/eval/toy.yaml", ["fid.resize_to=64", "classifier.lr=3e-3"])
    assert protocol["dataset"] == "data/toy" and protocol["fid"]["features"] == "classifier"
    assert protocol["fid"]["resize_to"] == 64 and protocol["classifier"]["lr"] == pytest.approx(0.003)
    assert protocol["fid"]["inception_weights"].endswith("pt_inception-2015-12-05-6726825d.pth")  # from base
    with pytest.raises(EvalInputError, match=r"override 'fid\.resize_too=64': unknown key 'fid\.resize_too'"):
        load_protocol("configs/eval/toy.yaml", ["fid.resize_too=64"])
    base = Path("configs/eval/base.yaml").resolve()
    typo = tmp_path / "typo.yaml"
    typo.write_text(f"base: {base}\ndataset: d\nclassifier:\n  epochs: many\n")
    with pytest.raises(EvalInputError, match=r"typo\.yaml: key 'classifier\.epochs' must be an integer"):
        load_protocol(typo)
    typo.write_text(f"base: {base}\ndataset: d\nclasifier: {{}}\n")
    with pytest.raises(EvalInputError, match=r"typo\.yaml: unknown key 'clasifier'"):
        load_protocol(typo)
