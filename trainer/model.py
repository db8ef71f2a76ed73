"""Masked autoencoder with a ViT backbone built from timm's PatchEmbed and Block
(after facebookresearch/mae ``models_mae.py``).

Shapes: images x [B, C, H, W]; N = (H/p)*(W/p) patches; L = N * (1 - mask_ratio) visible.
Encoder runs on the visible tokens only [B, 1+L, D] (3-4x less compute than all N); the decoder
sees [B, 1+N, Dd] with mask tokens; the loss is MSE on masked patches only.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from .pos_embed import sincos_2d


@dataclass
class MAEConfig:
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 1
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    fused_attn: bool = True  # SDPA (flash / memory-efficient kernels); False: eager softmax(QK^T)V
    grad_checkpointing: bool = False
    timm_name: str = "vit_base_patch16_224"  # the plain-timm architecture the encoder exports to

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2


# decoder 8 x 512 for every size, as in MAE and USF-MAE
PRESETS: dict[str, dict] = {
    # ~1 minute of CPU training for the demo and the tests
    "mae_vit_demo_patch16": dict(embed_dim=192, depth=4, num_heads=3, decoder_embed_dim=128,
                                 decoder_depth=2, decoder_num_heads=4, timm_name="vit_tiny_patch16_224"),
    # the demo encoder on 8x8 patches: same width/depth, 4x the tokens at a given img_size (the
    # phantom lesion task's lesions are a few 16-px patches wide at demo resolutions)
    "mae_vit_demo_patch8": dict(embed_dim=192, depth=4, num_heads=3, patch_size=8, decoder_embed_dim=128,
                                decoder_depth=2, decoder_num_heads=4, timm_name="vit_tiny_patch16_224"),
    "mae_vit_tiny_patch16": dict(embed_dim=192, depth=12, num_heads=3, timm_name="vit_tiny_patch16_224"),
    "mae_vit_small_patch16": dict(embed_dim=384, depth=12, num_heads=6, timm_name="vit_small_patch16_224"),
    "mae_vit_base_patch16": dict(embed_dim=768, depth=12, num_heads=12, timm_name="vit_base_patch16_224"),
    "mae_vit_large_patch16": dict(embed_dim=1024, depth=24, num_heads=16, timm_name="vit_large_patch16_224"),
    "mae_vit_huge_patch14": dict(embed_dim=1280, depth=32, num_heads=16, patch_size=14,
                                 timm_name="vit_huge_patch14_224"),
}


def config_for(name: str, **overrides) -> MAEConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; presets: {sorted(PRESETS)}")
    kw = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    return MAEConfig(**kw)


class MaskedAutoencoderViT(nn.Module):
    def __init__(self, cfg: MAEConfig):
        super().__init__()
        self.cfg = cfg
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, cfg.embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, qkv_bias=True,
                                           norm_layer=norm) for _ in range(cfg.depth)])
        self.norm = norm(cfg.embed_dim)
        self.decoder_embed = nn.Linear(cfg.embed_dim, cfg.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, n + 1, cfg.decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList([Block(cfg.decoder_embed_dim, cfg.decoder_num_heads, cfg.mlp_ratio,
                                                   qkv_bias=True, norm_layer=norm)
                                             for _ in range(cfg.decoder_depth)])
        self.decoder_norm = norm(cfg.decoder_embed_dim)
        self.decoder_pred = nn.Linear(cfg.decoder_embed_dim, cfg.patch_size**2 * cfg.in_chans)
        self.set_fused_attn(cfg.fused_attn)
        self._init_weights()

    def set_fused_attn(self, on: bool) -> None:
        """timm's Attention uses F.scaled_dot_product_attention when ``fused_attn`` is set."""
        for blk in [*self.blocks, *self.decoder_blocks]:
            blk.attn.fused_attn = on

    def _init_weights(self) -> None:
        g = int(self.patch_embed.num_patches**0.5)
        self.pos_embed.data.copy_(torch.from_numpy(sincos_2d(self.cfg.embed_dim, g))[None])
        self.decoder_pos_embed.data.copy_(torch.from_numpy(sincos_2d(self.cfg.decoder_embed_dim, g))[None])
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._init_module)

    @staticmethod
    def _init_module(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ patches
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, N, p*p*C]"""
        p, c = self.cfg.patch_size, self.cfg.in_chans
        b, _, h, w = imgs.shape
        x = imgs.reshape(b, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, p*p*C] -> [B, C, H, W]"""
        p, c = self.cfg.patch_size, self.cfg.in_chans
        g = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    @staticmethod
    def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """Per-sample masking by argsort of uniform noise.
        x [B, N, D] -> (visible [B, L, D], mask [B, N] (1 = masked), ids_restore [B, N])"""
        b, n, d = x.shape
        keep = int(n * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(b, n, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
        mask = torch.ones(b, n, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return visible, mask, ids_restore

    def _run(self, blocks, x):
        for blk in blocks:
            if self.cfg.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    def forward_encoder(self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """x [B, C, H, W] -> (latent [B, 1+L, D], mask [B, N], ids_restore [B, N])"""
        x = self.patch_embed(x) + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = self._run(self.blocks, torch.cat([cls, x], dim=1))
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent [B, 1+L, D] -> pixel predictions [B, N, p*p*C]"""
        x = self.decoder_embed(x)
        b, n = ids_restore.shape
        mask_tokens = self.mask_token.expand(b, n + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
        x = self.decoder_norm(self._run(self.decoder_blocks, x))
        return self.decoder_pred(x)[:, 1:, :]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE per patch, averaged over masked patches only."""
        target = self.patchify(imgs)
        if self.cfg.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred.float() - target.float()) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None):
        """imgs [B, C, H, W] -> (loss scalar, pred [B, N, p*p*C], mask [B, N])"""
        ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(imgs, ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask

    def config_dict(self) -> dict:
        return asdict(self.cfg)
