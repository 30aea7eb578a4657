"""Tiny synthetic teachers shared by the test files, and small helpers to run them.

Each factory returns ``(model, batch)``: a freshly built model in eval mode and one input batch of the
form ``inherit(calib=...)`` and ``evaluate`` accept (a tensor, or a Hugging Face style dict). Models are
seeded, so two calls build identical weights.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

Factory = Callable[[], tuple[nn.Module, Any]]


# -- running models ------------------------------------------------------------------------------------
def run(model: nn.Module, batch: Any) -> torch.Tensor:
    """The logits of ``model`` on ``batch`` (a tensor or a dict of keyword inputs), without grad."""
    with torch.no_grad():
        out = model(**batch) if isinstance(batch, dict) else model(batch)
    return out.logits if hasattr(out, "logits") else out


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| (want must not be all zero)."""
    scale = want.detach().abs().max()
    assert scale > 0, "reference output is all zero: the comparison would be meaningless"
    return float((got.detach() - want.detach()).abs().max() / scale)


# -- factories -----------------------------------------------------------------------------------------
def _seeded(fn: Factory) -> Factory:
    @functools.wraps(fn)
    def wrapper() -> tuple[nn.Module, Any]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, batch = fn()
        return model.eval(), batch

    return wrapper


@_seeded
def mlp() -> tuple[nn.Module, Any]:
    model = nn.Sequential(
        nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 24, bias=False), nn.GELU(), nn.Linear(24, 5)
    )
    return model, torch.randn(4, 12)


@_seeded
def cnn() -> tuple[nn.Module, Any]:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    return model, torch.randn(2, 3, 8, 8)


@_seeded
def resnet18() -> tuple[nn.Module, Any]:
    import torchvision

    model = torchvision.models.resnet18(num_classes=10)
    # Non-trivial batch-norm statistics, so that eval mode is not the identity.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model, torch.randn(2, 3, 32, 32)


def _bert(hidden: int, layers: int, heads: int, vocab: int, intermediate: int, positions: int):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=positions,
        num_labels=3,
    )
    model = BertForSequenceClassification(config)
    ids = torch.randint(1, vocab, (2, 8))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return model, {"input_ids": ids, "attention_mask": mask}


@_seeded
def bert_tiny() -> tuple[nn.Module, Any]:
    return _bert(hidden=32, layers=2, heads=2, vocab=100, intermediate=64, positions=16)


@_seeded
def bert_small() -> tuple[nn.Module, Any]:
    """Big enough (≈1M parameters, word embeddings included) that a 10% budget is reachable."""
    return _bert(hidden=128, layers=4, heads=2, vocab=2000, intermediate=512, positions=64)


@_seeded
def gpt2_tiny() -> tuple[nn.Module, Any]:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(config)
    return model, torch.randint(0, 100, (2, 8))


@_seeded
def llama_tiny() -> tuple[nn.Module, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config), torch.randint(0, 100, (2, 8))


@_seeded
def vit_tiny() -> tuple[nn.Module, Any]:
    import torchvision

    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )
    # torchvision zero-initialises the head: give it weights so the logits are not identically zero.
    nn.init.normal_(model.heads.head.weight, std=0.2)
    nn.init.normal_(model.heads.head.bias, std=0.2)
    return model, torch.randn(2, 3, 32, 32)


@_seeded
def conv1d_net() -> tuple[nn.Module, Any]:
    model = nn.Sequential(
        nn.Conv1d(3, 8, 5, stride=2, padding=2, padding_mode="circular"),
        nn.ReLU(),
        nn.Conv1d(8, 8, 3, dilation=2, padding=2, padding_mode="reflect"),
        nn.ReLU(),
        nn.Conv1d(8, 6, 4, padding="same", dilation=2, padding_mode="replicate"),
        nn.ReLU(),
        nn.Conv1d(6, 6, 3, stride=3, bias=False),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    )
    return model, torch.randn(2, 3, 40)


class EmbedNet(nn.Module):
    """Token ids -> embedding (with a padding index) -> mean over positions -> linear head."""

    def __init__(self, vocab: int = 40, dim: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(ids).mean(dim=1))


@_seeded
def embed_net() -> tuple[nn.Module, Any]:
    ids = torch.randint(0, 40, (3, 10))
    ids[:, -2:] = 0  # padding tokens
    return EmbedNet(), ids


class RawParamNet(nn.Module):
    """A custom module owning a raw ``nn.Parameter`` (unsupported) beside supported layers."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(8))
        self.fc1 = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(self.fc1(x * self.scale)))


def strided_cnn(width: int) -> nn.Module:
    """A seeded conv -> strided conv -> two-linear CNN for 3x16x16 inputs, channels ``width`` and ``2*width``."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * width * 7 * 7, 4 * width),
        nn.ReLU(),
        nn.Linear(4 * width, 10),
    ).eval()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- architectures whose own code reads their layers' weights (tests/test_architectures.py) -------------
def _transformer_encoder(batch_first: bool) -> tuple[nn.Module, Any]:
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=batch_first)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    x = torch.randn(3, 5, 16)
    return model, x if batch_first else x.transpose(0, 1).contiguous()


@_seeded
def transformer_encoder() -> tuple[nn.Module, Any]:
    """torch's encoder, batch first: in eval mode without grad it takes the fused fast path."""
    return _transformer_encoder(batch_first=True)


@_seeded
def transformer_encoder_seq_first() -> tuple[nn.Module, Any]:
    return _transformer_encoder(batch_first=False)


def _text_batch(vocab: int, length: int = 7, pad: int = 2) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, vocab, (2, length))
    mask = torch.ones_like(ids)
    mask[1, length - pad:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@_seeded
def hf_bert_model() -> tuple[nn.Module, Any]:
    """A bare BertModel (encoder family; outputs last_hidden_state)."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=16)
    return BertModel(config), _text_batch(60)


@_seeded
def t5_tiny() -> tuple[nn.Module, Any]:
    """Encoder-decoder; its feed-forward reads ``wo.weight.dtype`` outside ``wo``'s forward."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=60, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
                      tie_word_embeddings=False)
    batch = _text_batch(60)
    batch["decoder_input_ids"] = torch.randint(3, 60, (2, 4))
    return T5ForConditionalGeneration(config), batch


@_seeded
def bart_tiny() -> tuple[nn.Module, Any]:
    from transformers import BartConfig, BartForConditionalGeneration

    config = BartConfig(vocab_size=60, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=16,
                        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    batch = _text_batch(60)
    batch["decoder_input_ids"] = torch.randint(3, 60, (2, 4))
    return BartForConditionalGeneration(config), batch


@_seeded
def hf_vit_tiny() -> tuple[nn.Module, Any]:
    """Hugging Face ViT; its patch embedding's weight dtype is read by ViTEmbeddings."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=5)
    return ViTForImageClassification(config), {"pixel_values": torch.randn(2, 3, 16, 16)}


@_seeded
def clip_model_tiny() -> tuple[nn.Module, Any]:
    """Multimodal: CLIP's embeddings read their patch embedding's weight dtype."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=16, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    vision = dict(image_size=16, patch_size=4, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))
    ids = torch.randint(3, 60, (3, 7))
    ids[:, -1] = 2
    return model, {"input_ids": ids, "pixel_values": torch.randn(3, 3, 16, 16)}


class TwoTowers(nn.Module):
    """A dual encoder in the library's own output type: its output has no logits, two embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.img = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
        self.txt = nn.Sequential(nn.Linear(48, 64), nn.ReLU(), nn.Linear(64, 32))

    def forward(self, pixel_values: torch.Tensor, text: torch.Tensor) -> Any:
        from inhernet.dual import DualOutput

        return DualOutput(self.img(pixel_values), self.txt(text))


@_seeded
def two_towers() -> tuple[nn.Module, Any]:
    return TwoTowers(), {"pixel_values": torch.randn(16, 64), "text": torch.randn(16, 48)}


def output_of(out: Any) -> torch.Tensor:
    """The main tensor of a model's output: itself, or its logits (per image), or its last hidden state."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits_per_image", "logits", "last_hidden_state"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"no tensor output in {type(out).__name__}")


#: The tiny models of every layer kind an expert block replaces (linear, conv2d, conv1d, embedding, HF Conv1D).
GATED_MODELS = {"mlp": mlp, "cnn": cnn, "conv1d": conv1d_net, "embedding": embed_net, "gpt2": gpt2_tiny}


class WithUnusedLayer(nn.Module):
    """A used linear layer and a ``spare`` one that ``forward`` never calls (it stays dense: nothing measured it)."""

    def __init__(self, width: int, spare_out: int) -> None:
        super().__init__()
        self.used = nn.Linear(width, width)
        self.spare = nn.Linear(width, spare_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


class ThreeLinear(nn.Module):
    """Three linear layers of distinct shapes, so that a fake cost table can tell them apart."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 48)
        self.fc3 = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def three_linear() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return ThreeLinear().eval(), torch.randn(16, 32)


class LayersOnlyCosts:
    """A cost table that prices layers but cannot time whole models (``latency`` needs that)."""

    def dense(self, shape):
        return 1e-6

    def factorised(self, shape, rank):
        return 1e-7
