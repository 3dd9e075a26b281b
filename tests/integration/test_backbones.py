"""Any local Hugging Face encoder as backbone: a tiny, randomly initialised BERT, MPNet and
XLM-R, each with a tokenizer built here (WordPiece for the first two, Unigram for XLM-R),
saved as a local folder. Training on it goes through the same export, parity gate (ONNX
vs torch ≤ 1e-4) and tokenizer as MiniLM, and the version records the backbone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoModel,
    BertConfig,
    BertTokenizerFast,
    MPNetConfig,
    MPNetTokenizerFast,
    XLMRobertaConfig,
    XLMRobertaTokenizerFast,
)

from models import Registry
from tests.conftest import banking77_slice
from training.config import TrainConfig
from training.evaluate import OnnxRunner
from training.pipeline import train

SMALL = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 160,
}


def _words(rows) -> list[str]:
    seen: dict[str, None] = {}
    for text, _ in rows:
        for w in text.lower().replace("?", " ").replace(".", " ").replace(",", " ").split():
            seen.setdefault(w, None)
    return list(seen)[:400]


def _wordpiece_vocab(specials: list[str], words: list[str]) -> dict[str, int]:
    chars = sorted({c for w in words for c in w})
    tokens = dict.fromkeys(specials + chars + [f"##{c}" for c in chars] + words)
    return {t: i for i, t in enumerate(tokens)}


def make_bert(folder: Path, words: list[str]) -> None:
    vocab = _wordpiece_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], words)
    tok = BertTokenizerFast(vocab=vocab)
    config = BertConfig(vocab_size=len(tok), **SMALL)
    _save(folder, tok, config)


def make_mpnet(folder: Path, words: list[str]) -> None:
    vocab = _wordpiece_vocab(["<s>", "<pad>", "</s>", "[UNK]", "<mask>"], words)
    tok = MPNetTokenizerFast(vocab=vocab, unk_token="[UNK]")
    config = MPNetConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **SMALL)
    _save(folder, tok, config)


def make_xlmr(folder: Path, words: list[str]) -> None:
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    pieces = [(s, 0.0) for s in specials]
    chars = sorted({c for w in words for c in w})
    pieces += [(f"▁{w}", -1.0) for w in words] + [(c, -5.0) for c in chars] + [("▁", -3.0)]
    pieces += [("<mask>", 0.0)]
    backend = Tokenizer(models.Unigram(pieces, unk_id=3))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    tok = XLMRobertaTokenizerFast(tokenizer_object=backend, mask_token="<mask>")
    config = XLMRobertaConfig(vocab_size=len(pieces), pad_token_id=1, **SMALL)
    _save(folder, tok, config)


def _save(folder: Path, tokenizer, config) -> None:
    torch.manual_seed(0)
    model = AutoModel.from_config(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


@pytest.mark.parametrize(
    "family,make", [("bert", make_bert), ("mpnet", make_mpnet), ("xlmr", make_xlmr)]
)
def test_a_tiny_encoder_of_each_family_trains_exports_and_serves(
    tmp_path: Path, ten_classes, family, make
) -> None:
    rows = banking77_slice("train", ten_classes, per_class=6)
    folder = tmp_path / f"tiny-{family}"
    folder.mkdir()
    make(folder, _words(rows))
    registry = Registry(tmp_path / "registry")
    result = train(
        rows,
        TrainConfig(name=family, backbone=folder, strategy="feature_extraction"),
        registry=registry,
    )
    meta = result.metadata
    assert meta.backbone.name == folder.name
    assert meta.onnx.parity_max_abs_diff <= 1e-4  # the same gate as MiniLM's
    assert len(result.metadata.labels) == 10
    mv = registry.get(family, meta.version)
    tokenizer = json.loads((mv.path / "tokenizer.json").read_text())
    assert tokenizer["truncation"]["max_length"] == meta.max_length
    served = Tokenizer.from_file(str(mv.path / "tokenizer.json"))
    ids = served.encode("how do i activate my card").ids
    unknown = served.token_to_id("[UNK]") if family != "xlmr" else served.token_to_id("<unk>")
    assert len(ids) >= 6 and ids.count(unknown) == 0  # real word pieces, not unknowns
    print(family, "fused:", meta.onnx.fused)
    probs = OnnxRunner(mv.onnx_path, mv.path / "tokenizer.json").predict_proba(
        ["How do I activate my card?", "a much longer question about a transfer that I made"]
    )
    assert probs.shape == (2, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
