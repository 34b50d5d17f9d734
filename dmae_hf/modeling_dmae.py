# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
# Architecture after facebookresearch/mae `models_mae.py` and quanlin-wu/dmae `models_dmae.py` / `models_vit.py`.
"""PyTorch DMAE: denoising masked autoencoder pre-training and the smoothed classifier fine-tuned from it."""

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import ModelOutput
from transformers.utils import logging as hf_logging

from .configuration_dmae import DMAEConfig
from .defaults import ALPHA, N0, NOISE_BATCH, SEED, N
from .input_checks import check_labels, check_pixel_noise, check_pixel_values, refuse_renamed_arguments
from .load_report import expected_load_changes, load_summary, non_finite_tensors, refuse_non_finite_weights
from .remote_code import CUSTOM_PIPELINES, save_with_pipeline
from .smoothing import add_gaussian_noise

# A child of transformers' logger: its verbosity, handler and format apply (`transformers.logging.set_verbosity_*`).
logger = hf_logging.get_logger(f"transformers.{__name__}")

def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int, add_cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sine-cosine position table of MAE (`util/pos_embed.py`), shape `(1, [1 +] grid_size**2, embed_dim)`.

    Half of the channels encode the row index and half the column index, each as `[sin(p * w_k), cos(p * w_k)]`
    with `w_k = 1 / 10000 ** (k / (D / 4))`. The CLS row is zero.
    """
    if embed_dim % 4:
        raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {embed_dim}.")
    grid_h = np.arange(grid_size, dtype=np.float64)
    grid_w = np.arange(grid_size, dtype=np.float64)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape(2, -1)  # w goes first, as in MAE

    omega = 1.0 / 10000 ** (np.arange(embed_dim // 4, dtype=np.float64) / (embed_dim / 4.0))

    def encode(pos):
        out = np.einsum("m,d->md", pos, omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    table = np.concatenate([encode(grid[0]), encode(grid[1])], axis=1)
    if add_cls_token:
        table = np.concatenate([np.zeros([1, embed_dim]), table], axis=0)
    return torch.from_numpy(table).float().unsqueeze(0)


def pos_grid_size(pos_table: torch.Tensor) -> int:
    """Side of the square patch grid of a `(1, 1 + grid**2, D)` position table (CLS row first)."""
    return int(math.sqrt(pos_table.shape[1] - 1))


def interpolate_pos_table(pos_table: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """A `(1, 1 + grid**2, D)` position table (CLS row first) for a `rows` x `cols` patch grid: the table itself when
    the grid is its own, else its patch rows resized bicubically (align_corners=False, in float32), CLS row kept.
    The encoder's and the decoder's tables both go through here."""
    grid = pos_grid_size(pos_table)
    if (rows, cols) == (grid, grid):
        return pos_table
    patch_pos = pos_table[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos.float(), size=(rows, cols), mode="bicubic", align_corners=False)
    patch_pos = patch_pos.to(pos_table.dtype).permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
    return torch.cat([pos_table[:, :1], patch_pos], dim=1)


def noisy_copies(
    pixel_values: torch.Tensor, sigma: float, num_copies: int = 1, pixel_noise: torch.Tensor | None = None
) -> torch.Tensor:
    """`num_copies` noisy copies of a batch of clean [0, 1] images, copy-major (`x.repeat(m, 1, 1, 1)`, the layout
    of `consistency_loss`), in float32: `x + pixel_noise` when the perturbation is given (zeros for none), else
    `x + N(0, sigma^2 I)` drawn by `add_gaussian_noise`. Pre-training takes one copy, noisy fine-tuning m."""
    repeated = pixel_values if num_copies == 1 else pixel_values.repeat(num_copies, 1, 1, 1)
    if pixel_noise is None:
        return add_gaussian_noise(repeated, sigma)
    copies = f"{num_copies} copies of pixel_values, copy-major" if num_copies > 1 else "that of pixel_values"
    check_pixel_noise(pixel_noise, repeated.shape, copies)
    return repeated.float() + pixel_noise.float()


@dataclass
class DMAEModelOutput(ModelOutput):
    """
    Output of [`DMAEModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, 1 + num_visible_patches, hidden_size)`):
            Encoder output (after the final LayerNorm when the model has one).
        mask (`torch.FloatTensor` of shape `(batch_size, num_patches)`): 0 = kept, 1 = removed; `None` unmasked.
        ids_restore (`torch.LongTensor` of shape `(batch_size, num_patches)`): un-shuffling indices; `None` unmasked.
        hidden_states (`tuple(torch.FloatTensor)`): embeddings and the output of every block, when requested.
        attentions (`tuple(torch.FloatTensor)`): attention weights of every block (eager attention only).
    """

    last_hidden_state: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class DMAEForPreTrainingOutput(ModelOutput):
    """
    Output of [`DMAEForPreTraining`].

    Args:
        loss (`torch.FloatTensor` of shape `()`): the DMAE loss, MSE against the clean image over all patches.
        logits (`torch.FloatTensor` of shape `(batch_size, num_patches, patch_size**2 * num_channels)`):
            per-patch reconstruction (in normalised-pixel units, per-patch normalised when `norm_pix_loss`).
        mask (`torch.FloatTensor` of shape `(batch_size, num_patches)`): 0 = visible to the encoder, 1 = masked.
        ids_restore (`torch.LongTensor` of shape `(batch_size, num_patches)`): un-shuffling indices.
        hidden_states, attentions: of the encoder, when requested.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class DMAEPatchEmbeddings(nn.Module):
    """Image to patch tokens: a `patch_size` x `patch_size` convolution with stride `patch_size`."""

    def __init__(self, config: DMAEConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        height, width = pixel_values.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"Input size ({height}x{width}) is not a multiple of the patch size {self.patch_size}.")
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


class DMAEEmbeddings(nn.Module):
    """Patch embeddings + position embeddings (+ random masking in pre-training) + CLS token."""

    def __init__(self, config: DMAEConfig):
        super().__init__()
        self.config = config
        self.patch_embeddings = DMAEPatchEmbeddings(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        # Fixed sin-cos in pre-training; DMAEForSmoothedClassification makes it trainable, as timm's ViT does.
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, config.num_patches + 1, config.hidden_size), requires_grad=False
        )

    def interpolate_pos_encoding(self, height: int, width: int) -> torch.Tensor:
        """Position table for a `height` x `width` input (see `interpolate_pos_table`)."""
        patch = self.config.patch_size
        return interpolate_pos_table(self.position_embeddings, height // patch, width // patch)

    def random_masking(self, sequence: torch.Tensor, mask_ratio: float, mask_noise: torch.Tensor | None = None):
        """Per-sample random masking by argsort of uniform `mask_noise` (MAE): the `len_keep` smallest are kept.

        Returns the kept tokens `(B, len_keep, D)`, the binary mask `(B, L)` (0 keep, 1 remove) in the original
        order, and `ids_restore` `(B, L)`. `len_keep = int(L * (1 - mask_ratio))`.
        """
        batch_size, seq_length, dim = sequence.shape
        len_keep = int(seq_length * (1 - mask_ratio))
        if mask_noise is None:
            mask_noise = torch.rand(batch_size, seq_length, device=sequence.device)
        elif mask_noise.shape != (batch_size, seq_length):
            raise ValueError(f"Masking noise (mask_noise) must have shape {(batch_size, seq_length)}, "
                             f"got {tuple(mask_noise.shape)}.")
        ids_shuffle = torch.argsort(mask_noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        kept = torch.gather(sequence, dim=1, index=ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        mask = torch.ones(batch_size, seq_length, device=sequence.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, dim=1, index=ids_restore)
        return kept, mask, ids_restore

    def forward(
        self,
        pixel_values: torch.Tensor,
        mask_ratio: float | None = None,
        mask_noise: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ):
        height, width = pixel_values.shape[-2:]
        embeddings = self.patch_embeddings(pixel_values)
        pos = self.interpolate_pos_encoding(height, width) if interpolate_pos_encoding else self.position_embeddings
        if pos.shape[1] - 1 != embeddings.shape[1]:
            raise ValueError(
                f"Input of {height}x{width} gives {embeddings.shape[1]} patches but the position table has "
                f"{pos.shape[1] - 1}; pass interpolate_pos_encoding=True to use another resolution."
            )
        embeddings = embeddings + pos[:, 1:]
        mask = ids_restore = None
        if mask_ratio is not None:
            embeddings, mask, ids_restore = self.random_masking(embeddings, mask_ratio, mask_noise)
        cls_tokens = (self.cls_token + pos[:, :1]).expand(embeddings.shape[0], -1, -1)
        return torch.cat([cls_tokens, embeddings], dim=1), mask, ids_restore


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
):
    """softmax(q k^T * scaling) v with the softmax in float32; returns `(B, L, H, D)` output and the weights."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class DMAEAttention(nn.Module):
    """Multi-head self-attention with a fused `qkv` projection (rows `[q; k; v]`, as timm's `Attention`)."""

    def __init__(self, config: DMAEConfig, hidden_size: int, num_heads: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.attention_dropout = config.attention_probs_dropout_prob
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False):
        batch_size, seq_length, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch_size, seq_length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)

        attention_interface: Callable = eager_attention_forward
        if self.config._attn_implementation not in (None, "eager") and not output_attentions:
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            scaling=self.scaling,
            dropout=self.attention_dropout if self.training else 0.0,
        )
        attn_output = self.proj(attn_output.reshape(batch_size, seq_length, -1))
        return attn_output, attn_weights


class DMAEMLP(nn.Module):
    def __init__(self, config: DMAEConfig, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(self.act(self.fc1(hidden_states)))))


class DMAEDropPath(nn.Module):
    """Stochastic depth: zero a sample's residual branch with probability `drop_prob`, rescale the rest."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        random_tensor = hidden_states.new_empty(shape).bernoulli_(keep_prob)
        return hidden_states * random_tensor / keep_prob

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class DMAELayer(GradientCheckpointingLayer):
    """The one pre-norm ViT block of the package (timm `Block`), used by the encoder and the decoder."""

    def __init__(self, config: DMAEConfig, hidden_size: int, num_heads: int, intermediate_size: int, drop_path=0.0):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.attention = DMAEAttention(config, hidden_size, num_heads)
        self.layernorm_after = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = DMAEMLP(config, hidden_size, intermediate_size)
        self.drop_path = DMAEDropPath(drop_path)

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False):
        attn_output, attn_weights = self.attention(self.layernorm_before(hidden_states), output_attentions)
        hidden_states = hidden_states + self.drop_path(attn_output)
        hidden_states = hidden_states + self.drop_path(self.mlp(self.layernorm_after(hidden_states)))
        return hidden_states, attn_weights


def run_layers(layers, hidden_states, output_hidden_states=False, output_attentions=False):
    """Apply a stack of `DMAELayer`s, collecting hidden states and attention weights when asked."""
    all_hidden_states = (hidden_states,) if output_hidden_states else None
    all_attentions = () if output_attentions else None
    for layer in layers:
        hidden_states, attn_weights = layer(hidden_states, output_attentions)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        if output_attentions:
            all_attentions += (attn_weights,)
    return hidden_states, all_hidden_states, all_attentions


class DMAEPreTrainedModel(PreTrainedModel):
    config: DMAEConfig
    config_class = DMAEConfig
    base_model_prefix = "dmae"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["DMAEEmbeddings", "DMAELayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, refusing a config override out of range (e.g. `smoothing_sigma=nan`,
        named like any config error) and a checkpoint with NaN or Inf weights (corrupt, or saved after training
        diverged) with a `ValueError` that names the tensors."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.config.validate_values()  # config overrides (`from_pretrained(path, smoothing_sigma=...)`) come after
        refuse_non_finite_weights(model, pretrained_model_name_or_path)
        return loaded

    @torch.no_grad()
    def _init_weights(self, module):
        """MAE's initialisation: xavier-uniform Linear weights and patch projection, zero biases, unit LayerNorms,
        normal(0.02) CLS and mask tokens, fixed 2-D sin-cos position tables with a zero CLS row; the classification
        head is trunc_normal(std=2e-5) as in MAE fine-tuning."""
        if isinstance(module, nn.Linear):
            if getattr(module, "is_classification_head", False):
                init.trunc_normal_(module.weight, std=2e-5)  # MAE's fine-tuning head init
            else:
                init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, DMAEPatchEmbeddings):
            weight = module.projection.weight
            # xavier_uniform on the (out, in * k * k) view of the convolution, as in MAE
            bound = math.sqrt(6.0 / (weight.shape[0] + weight[0].numel()))
            init.uniform_(weight, -bound, bound)
            init.zeros_(module.projection.bias)
        elif isinstance(module, DMAEEmbeddings):
            init.normal_(module.cls_token, std=self.config.initializer_range)
            table = module.position_embeddings
            init.copy_(table, get_2d_sincos_pos_embed(table.shape[-1], pos_grid_size(table)))
        elif isinstance(module, DMAEDecoder):
            init.normal_(module.mask_token, std=self.config.initializer_range)
            table = module.decoder_pos_embed
            init.copy_(table, get_2d_sincos_pos_embed(table.shape[-1], pos_grid_size(table)))

    def preprocess_pixels(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """[0,1] pixels -> model input: bicubic resize to `image_size` when needed (unless
        `interpolate_pos_encoding`), then normalisation with `image_mean` / `image_std`.

        The resize is torch's bicubic (a = -0.75, align_corners=False, no antialias), as the official CIFAR-10
        transfer applies it to the *noisy* 32x32 image, so it is part of the (smoothed) base classifier.
        """
        size = self.config.image_size
        if not interpolate_pos_encoding and tuple(pixel_values.shape[-2:]) != (size, size):
            pixel_values = F.interpolate(pixel_values, size=(size, size), mode="bicubic", align_corners=False)
        mean = torch.tensor(self.config.image_mean, device=pixel_values.device, dtype=pixel_values.dtype)
        std = torch.tensor(self.config.image_std, device=pixel_values.device, dtype=pixel_values.dtype)
        return (pixel_values - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


class DMAEModel(DMAEPreTrainedModel):
    """The DMAE ViT encoder. It takes [0,1] pixels and resizes and normalises them itself (`preprocess_pixels`)."""

    def __init__(self, config: DMAEConfig, add_final_layernorm: bool = True):
        super().__init__(config)
        self.config = config
        self.embeddings = DMAEEmbeddings(config)
        dpr = np.linspace(0, config.drop_path_rate, config.num_hidden_layers).tolist()  # stochastic depth decay rule
        self.layers = nn.ModuleList(
            DMAELayer(config, config.hidden_size, config.num_attention_heads, config.intermediate_size, dpr[i])
            for i in range(config.num_hidden_layers)
        )
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if add_final_layernorm else None
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> DMAEPatchEmbeddings:
        return self.embeddings.patch_embeddings

    def forward(
        self,
        pixel_values: torch.Tensor,
        mask_ratio: float | None = None,
        mask_noise: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> DMAEModelOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Images in [0, 1] pixel space (noise, if any, already added). Resized and normalised inside.
        mask_ratio (`float`, *optional*):
            When given, keep only `int(L * (1 - mask_ratio))` random patches (pre-training); `None` keeps all.
        mask_noise (`torch.FloatTensor` of shape `(batch_size, num_patches)`, *optional*):
            Uniform noise that decides the masking (argsort, smallest kept), for reproducible masks.
        """
        refuse_renamed_arguments(kwargs)
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        check_pixel_values(pixel_values, self.config.num_channels, clean=False)
        if mask_ratio is not None and not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}.")

        pixel_values = self.preprocess_pixels(pixel_values, interpolate_pos_encoding)
        embeddings, mask, ids_restore = self.embeddings(pixel_values, mask_ratio, mask_noise, interpolate_pos_encoding)
        hidden_states, all_hidden_states, all_attentions = run_layers(
            self.layers, embeddings, output_hidden_states, output_attentions
        )
        if self.layernorm is not None:
            hidden_states = self.layernorm(hidden_states)
        if not return_dict:
            return tuple(v for v in (hidden_states, mask, ids_restore, all_hidden_states, all_attentions)
                         if v is not None)
        return DMAEModelOutput(
            last_hidden_state=hidden_states,
            mask=mask,
            ids_restore=ids_restore,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )


class DMAEDecoder(nn.Module):
    """MAE's lightweight decoder: embed visible tokens, re-insert mask tokens, add fixed positions, 8 blocks,
    LayerNorm and a linear map to `patch_size**2 * num_channels` pixels per patch."""

    def __init__(self, config: DMAEConfig):
        super().__init__()
        self.config = config
        dim = config.decoder_hidden_size
        self.decoder_embed = nn.Linear(config.hidden_size, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 1, dim), requires_grad=False)
        self.decoder_layers = nn.ModuleList(
            DMAELayer(config, dim, config.decoder_num_attention_heads, config.decoder_intermediate_size)
            for _ in range(config.decoder_num_hidden_layers)
        )
        self.decoder_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.decoder_pred = nn.Linear(dim, config.patch_size**2 * config.num_channels)

    def interpolate_pos_encoding(self, num_patches: int) -> torch.Tensor:
        """Position table for a square grid of `num_patches` patches (see `interpolate_pos_table`)."""
        side = int(math.sqrt(num_patches))
        return interpolate_pos_table(self.decoder_pos_embed, side, side)

    def forward(self, hidden_states: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(hidden_states)
        num_masked = ids_restore.shape[1] + 1 - x.shape[1]
        mask_tokens = self.mask_token.expand(x.shape[0], num_masked, -1)
        x_ = torch.cat([x[:, 1:], mask_tokens], dim=1)
        x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], x_], dim=1)
        x = x + self.interpolate_pos_encoding(ids_restore.shape[1])
        x, _, _ = run_layers(self.decoder_layers, x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:]


class DMAEForPreTraining(DMAEPreTrainedModel):
    """DMAE pre-training: Gaussian noise in [0,1] pixel space, 75% random masking, reconstruction of the clean image.

    Loss (`models_dmae.py`): with `x` the clean image, `x~ = x + N(0, noise_sigma^2 I)` and `pred = D(E(mask(x~)))`,
    `loss = mean over all patches and pixels of (pred - t)^2`, where `t = patchify(normalise(x))`, per-patch
    standardised (`(t - mean) / sqrt(var + 1e-6)`, unbiased var) when `norm_pix_loss`.
    """

    def __init__(self, config: DMAEConfig):
        super().__init__(config)
        self.config = config
        self.dmae = DMAEModel(config)
        self.decoder = DMAEDecoder(config)
        self.post_init()

    def get_input_embeddings(self) -> DMAEPatchEmbeddings:
        return self.dmae.embeddings.patch_embeddings

    def patchify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(N, C, H, W)` -> `(N, L, p*p*C)`, channel-last inside each patch (MAE's `einsum('nchpwq->nhwpqc')`)."""
        p, c = self.config.patch_size, self.config.num_channels
        n, _, height, width = pixel_values.shape
        h, w = height // p, width // p
        x = pixel_values.reshape(n, c, h, p, w, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(n, h * w, p * p * c)

    def unpatchify(self, patches: torch.Tensor, image_size: tuple[int, int] | None = None) -> torch.Tensor:
        """`(N, L, p*p*C)` -> `(N, C, H, W)`; square images unless `image_size` is given."""
        p, c = self.config.patch_size, self.config.num_channels
        n, length, _ = patches.shape
        height, width = image_size if image_size is not None else (int(math.sqrt(length)) * p,) * 2
        h, w = height // p, width // p
        if h * w != length:
            raise ValueError(f"{length} patches do not tile a {height}x{width} image with patch size {p}.")
        x = patches.reshape(n, h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(n, c, h * p, w * p)

    def forward_loss(self, target_pixels: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE of `pred` against the normalised clean image (all patches, or masked ones when
        `loss_on_all_patches=False`, MAE's loss)."""
        target = self.patchify(target_pixels)
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred.float() - target.float()) ** 2).mean(dim=-1)
        if self.config.loss_on_all_patches:
            return loss.mean()
        return (loss * mask).sum() / mask.sum()

    def forward(
        self,
        pixel_values: torch.Tensor,
        mask_noise: torch.Tensor | None = None,
        pixel_noise: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> DMAEForPreTrainingOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Clean images in [0, 1] pixel space.
        mask_noise (`torch.FloatTensor` of shape `(batch_size, num_patches)`, *optional*):
            Uniform noise that decides the random masking (argsort; the smallest values are kept).
        pixel_noise (`torch.FloatTensor` shaped like `pixel_values`, *optional*):
            The additive perturbation itself; defaults to `N(0, noise_sigma^2)`. Pass zeros for plain MAE.
        mask_ratio (`float`, *optional*): overrides `config.mask_ratio`.
        """
        refuse_renamed_arguments(kwargs)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        check_pixel_values(pixel_values, self.config.num_channels, clean=True)
        noisy = noisy_copies(pixel_values, self.config.noise_sigma, pixel_noise=pixel_noise)
        mask_ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio

        outputs = self.dmae(
            noisy,
            mask_ratio=mask_ratio,
            mask_noise=mask_noise,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        logits = self.decoder(outputs.last_hidden_state, outputs.ids_restore)
        target = self.preprocess_pixels(pixel_values.float(), interpolate_pos_encoding)
        loss = self.forward_loss(target, logits, outputs.mask)
        if not return_dict:
            out = (logits, outputs.mask, outputs.ids_restore)
            return (loss,) + out
        return DMAEForPreTrainingOutput(
            loss=loss,
            logits=logits,
            mask=outputs.mask,
            ids_restore=outputs.ids_restore,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


    @torch.no_grad()
    def denoise(self, noisy_pixel_values: torch.Tensor) -> torch.Tensor:
        r"""D(x~): the DMAE as a denoiser, for denoised smoothing (Salman et al., 2020) in front of any classifier.

        The encoder sees every patch of the noisy [0, 1] image (mask ratio 0) and the decoder's prediction becomes
        an image of `image_size` in [0, 1] pixels (clamped). The decoder predicts the normalised image
        `t = (x - image_mean) / image_std` patch by patch; with `norm_pix_loss` it predicts each patch standardised,
        `(t - mu) / sqrt(v + 1e-6)`, and (mu, v) of the clean patch are estimated from the noisy patch t~, whose
        noise has variance s_c^2 = (sigma / image_std_c)^2 in channel c:

            mu^ = mean(t~),   v^ = max(var(t~) - mean_c s_c^2, 0)     (E[mean t~] = mu, E[var t~] = v + mean s^2)

        with sigma = `config.noise_sigma`, the level the model was trained to remove: a denoiser serves that
        sigma only. `image_size` inputs only (a bicubic resize would change the noise).
        """
        config = self.config
        if tuple(noisy_pixel_values.shape[-2:]) != (config.image_size, config.image_size):
            raise ValueError(f"The denoiser works on {config.image_size}x{config.image_size} images, got "
                             f"{tuple(noisy_pixel_values.shape[-2:])}: certify at the denoiser's resolution.")
        keep_in_order = torch.arange(config.num_patches, device=noisy_pixel_values.device, dtype=torch.float32)
        hidden = self.dmae(noisy_pixel_values, mask_ratio=0.0,
                           mask_noise=keep_in_order.expand(noisy_pixel_values.shape[0], -1), return_dict=True)
        pred = self.decoder(hidden.last_hidden_state, hidden.ids_restore).float()
        std = torch.tensor(config.image_std, device=pred.device).view(1, -1, 1, 1)
        mean = torch.tensor(config.image_mean, device=pred.device).view(1, -1, 1, 1)
        if config.norm_pix_loss:
            noisy = self.patchify(self.preprocess_pixels(noisy_pixel_values.float()))
            noise_var = ((config.noise_sigma / std) ** 2).mean()
            patch_var = (noisy.var(dim=-1, keepdim=True) - noise_var).clamp(min=0)
            pred = pred * (patch_var + 1.0e-6) ** 0.5 + noisy.mean(dim=-1, keepdim=True)
        image = self.unpatchify(pred) * std + mean
        return image.clamp(0.0, 1.0)


def consistency_loss(logits: torch.Tensor, num_copies: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Consistency regularisation of Jeong & Shin (2020), as DMAE fine-tunes with it.

    `logits` holds `num_copies` noisy copies of a batch, copy-major (`x.repeat(m, 1, 1, 1)`). With
    `p_i = softmax(f(x + d_i))` and `p_bar = (1/m) sum_i p_i`, returns per-sample
    `(1/m) sum_i KL(p_bar || p_i)` and the entropy `H(p_bar)`, each averaged over the batch.
    """
    log_probs = F.log_softmax(logits.float(), dim=-1).chunk(num_copies)
    avg_probs = torch.stack([lp.exp() for lp in log_probs]).mean(0)
    kl = sum(F.kl_div(lp, avg_probs, reduction="none").sum(-1) for lp in log_probs) / num_copies
    entropy = -(avg_probs * torch.log(avg_probs.clamp_min(1e-20))).sum(-1)
    return kl.mean(), entropy.mean()


class DMAEForSmoothedClassification(DMAEPreTrainedModel):
    """The base classifier f of a randomized-smoothing classifier g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c).

    f is the DMAE encoder fine-tuned on noisy images, with MAE's head: mean of the patch tokens -> `fc_norm` ->
    linear (`pooling="mean"`), or the CLS token after the final norm (`pooling="cls"`). In eval mode `forward`
    returns f's logits on the input as given (the certifier adds the noise). In training mode with labels it adds
    the noise itself and returns the paper's fine-tuning loss on `m = num_noise_samples` noisy copies:

        L = CE(f(x + d_i), y) [mean over the m*B copies] + lambda * (1/m) sum_i KL(p_bar || p_i) + eta * H(p_bar)

    `predict` and `certify` run Cohen et al.'s PREDICT and CERTIFY with `sigma = config.smoothing_sigma`.
    """

    # Loading a pre-training checkpoint (`DMAEForPreTraining`) drops its decoder (and, with mean pooling, its final
    # norm) and initialises the head: expected, so kept out of transformers' load report and summarised in one line by
    # `from_pretrained`. Any other unexpected, missing or mis-shaped key is still reported in full.
    _keys_to_ignore_on_load_unexpected = [r"^decoder\.", r"^dmae\.layernorm\."]
    _keys_to_ignore_on_load_missing = [r"^classifier\.", r"^fc_norm\."]
    # transformers' custom-pipeline entry (the format `Pipeline.save_pretrained` writes) for remote code
    custom_pipelines = CUSTOM_PIPELINES

    def __init__(self, config: DMAEConfig):
        super().__init__(config)
        self.config = config
        self.num_labels = config.num_labels
        self.dmae = DMAEModel(config, add_final_layernorm=config.pooling == "cls")
        self.dmae.embeddings.position_embeddings.requires_grad_(True)  # learned when fine-tuning, as in timm
        self.fc_norm = (nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.pooling == "mean"
                        else None)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.classifier.is_classification_head = True
        self.post_init()

    def get_input_embeddings(self) -> DMAEPatchEmbeddings:
        return self.dmae.embeddings.patch_embeddings

    def _adjust_missing_and_unexpected_keys(self, loading_info) -> None:
        """transformers' filtering by `_keys_to_ignore_on_load_*`, remembering what it filtered for
        `from_pretrained`."""
        self._expected_load_changes = expected_load_changes(loading_info,
                                                            super()._adjust_missing_and_unexpected_keys)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, plus one warning line when expected keys were dropped or initialised:
        `DMAEForSmoothedClassification from <path>: dropped decoder + dmae.layernorm (N tensors), initialised
        classifier + fc_norm (4 tensors)`."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        dropped, initialised = model.__dict__.pop("_expected_load_changes", ((), ()))
        if dropped or initialised:
            logger.warning(load_summary(type(model).__name__, pretrained_model_name_or_path, dropped, initialised))
        return loaded

    def _logits(self, pixel_values: torch.Tensor, interpolate_pos_encoding=False, **kwargs):
        outputs = self.dmae(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True,
                            **kwargs)
        hidden = outputs.last_hidden_state
        pooled = self.fc_norm(hidden[:, 1:].mean(dim=1)) if self.fc_norm is not None else hidden[:, 0]
        return self.classifier(pooled), outputs

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        pixel_noise: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            [0, 1] pixels. In eval mode, or without labels, classified as given (noise included by the caller).
        labels (`torch.LongTensor` of shape `(batch_size,)` or `torch.FloatTensor` `(batch_size, num_labels)`):
            Class indices or soft targets (mixup/cutmix). In training mode they trigger the noisy fine-tuning loss
            (and `logits` then holds the `m * batch_size` noisy copies, copy-major); in eval mode plain CE.
        pixel_noise (`torch.FloatTensor` of shape `(m * batch_size, C, H, W)`, *optional*):
            The additive noise of the m copies in training; defaults to `N(0, smoothing_sigma^2)`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        noisy_training = self.training and labels is not None
        check_pixel_values(pixel_values, self.config.num_channels, clean=noisy_training)
        if labels is not None:
            check_labels(labels, pixel_values.shape[0], self.num_labels)

        m = self.config.num_noise_samples if noisy_training else 1
        inputs = pixel_values
        if noisy_training:
            inputs = noisy_copies(pixel_values, self.config.smoothing_sigma, m, pixel_noise)

        logits, outputs = self._logits(
            inputs,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )

        loss = None
        if labels is not None:
            targets = labels.repeat(m, *([1] * (labels.ndim - 1)))
            loss = self._cross_entropy(logits, targets)
            if noisy_training and m > 1:
                kl, entropy = consistency_loss(logits, m)
                loss = loss + self.config.consistency_lambda * kl + self.config.consistency_eta * entropy

        if not return_dict:
            output = (logits,) + tuple(v for v in (outputs.hidden_states, outputs.attentions) if v is not None)
            return ((loss,) + output) if loss is not None else output
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    def _cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy with hard (`(N,)`) or soft (`(N, C)`) targets and `config.label_smoothing`."""
        logits = logits.float()
        if targets.ndim == 1:
            return F.cross_entropy(logits, targets, label_smoothing=self.config.label_smoothing)
        eps = self.config.label_smoothing
        targets = targets.float() * (1 - eps) + eps / self.num_labels
        return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()

    @torch.no_grad()
    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained` (also behind `push_to_hub`), plus the `certified-image-classification`
        pipeline for remote code: `custom_pipelines` in config.json and `pipeline_dmae.py` with the flat files it
        imports, so that `pipeline("certified-image-classification", model=..., trust_remote_code=True)` works where
        dmae-hf is not installed (see `remote_code.py`)."""
        return save_with_pipeline(self, save_directory, super().save_pretrained, *args, **kwargs)

    def predict(self, pixel_values, n: int = N, alpha: float = ALPHA, batch_size: int = NOISE_BATCH, seed: int = SEED,
                sigma: float | None = None, override_sigma: bool = False, **kwargs):
        """Cohen et al.'s PREDICT for the smoothed classifier g at `sigma` (default `config.smoothing_sigma`; another
        sigma needs `override_sigma=True`): `SmoothedClassifier(self, sigma, override_sigma=...).predict(...)`."""
        from .smoothed_classifier import SmoothedClassifier  # the layer above the model: see the module doc there

        return SmoothedClassifier(self, sigma=sigma, override_sigma=override_sigma).predict(
            pixel_values, n=n, alpha=alpha, batch_size=batch_size, seed=seed, **kwargs)

    def certify(self, pixel_values, n0: int = N0, n: int = N, alpha: float = ALPHA, batch_size: int = NOISE_BATCH,
                seed: int = SEED, sigma: float | None = None, override_sigma: bool = False, **kwargs):
        """Cohen et al.'s CERTIFY for the smoothed classifier g at `sigma` (default `config.smoothing_sigma`; another
        sigma needs `override_sigma=True`): `SmoothedClassifier(self, sigma, override_sigma=...).certify(...)`."""
        from .smoothed_classifier import SmoothedClassifier

        return SmoothedClassifier(self, sigma=sigma, override_sigma=override_sigma).certify(
            pixel_values, n0=n0, n=n, alpha=alpha, batch_size=batch_size, seed=seed, **kwargs)

    def base_classifier(self, noisy_pixel_values: torch.Tensor) -> torch.Tensor:
        """f: logits of a batch of noisy [0,1] images, without input validation (the certifier validated x)."""
        if self.training:
            warnings.warn("Certifying a model in training mode (dropout, drop path active); call model.eval().",
                          stacklevel=1)
        return self._logits(noisy_pixel_values)[0]


__all__ = [
    "non_finite_tensors",
    "DMAEPreTrainedModel",
    "DMAEModel",
    "DMAEForPreTraining",
    "DMAEForSmoothedClassification",
    "get_2d_sincos_pos_embed",
]
