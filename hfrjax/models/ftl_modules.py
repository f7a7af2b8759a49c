"""FTL's modules: encoder Enc, decoder Dec, filter R and classifier FC (FTL §3.2, Fig. 2).

* Enc: image x -> rich feature g in R^320. ``trunk="conv"``: a CASIA-Net / DR-GAN style
  encoder (stages of conv3x3 + BN + ELU, the second conv of each stage with stride 2, a
  conv to 320 channels and global average pooling); ``trunk="iresnet"``: the library's
  IResNet with a 320-d head (``trunk_kwargs`` as ``iresnet``: depth/layers, base_width, ...),
  whose parameters convert from arcface_torch checkpoints unchanged.
* Dec: g -> x' with x's shape (L_recon = ||x' - x||², Eq. 1): a linear layer to a small map,
  stride-2 transposed convs (+ BN + ELU) back up, a 3x3 conv to the image channels (linear
  output, so any input normalisation works), centre-cropped to the input size.
* R: g -> identity feature f in R^320: a linear layer, two transposed convs, two convs and a
  linear layer (§4), ELU between them. No BatchNorm: stage 1 of Alg. 1 trains R on three
  differently drawn batches (hard regular, UR, transferred features), which batch statistics
  would mix.
* FC: a plain linear classifier without bias, logits = Wᵀf (Eq. 2; m-L2 of Eq. 3 is ||Wᵀf||²).

One module, four parameter groups: ``params["enc"]``, ``["dec"]``, ``["filter"]``, ``["fc"]``
(BN statistics in ``batch_stats["enc"]`` / ``["dec"]``). Alg. 1 freezes Enc and Dec in stage 1
and FC in stage 2: build ``optax.multi_transform`` from `ftl_param_labels`. Apply the parts
separately with ``method=``: ``encode(x, train)``, ``decode(g, train)``, ``filter_features(g)``,
``classify(f)``; ``forward_all(x, train)`` returns all four outputs. ``__call__(x, train)`` is
the recognition embedding f = R(Enc(x)), so the network is a drop-in backbone for evaluation
and export; ``init`` through ``__call__`` creates all four groups.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hfrjax.models.iresnet import iresnet
from hfrjax.models.layers import BatchNorm, Dtype, torch_padding
from hfrjax.models.registry import register_model

FTL_GROUPS = ("enc", "dec", "filter", "fc")
FTL_TRUNKS = ("conv", "iresnet")


class ConvEncoder(nn.Module):
    """CASIA-Net / DR-GAN style encoder: image -> ``feature_dim`` rich feature g."""

    widths: Sequence[int] = (32, 64, 128, 256)
    feature_dim: int = 320
    input_size: int = 32
    in_channels: int = 3
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        conv = functools.partial(
            nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype
        )
        bn = functools.partial(
            BatchNorm, use_running_average=not train, dtype=self.dtype, param_dtype=self.param_dtype
        )
        x = x.astype(self.dtype)
        for stage, width in enumerate(self.widths):
            for j, stride in enumerate((1, 2)):
                x = conv(
                    width,
                    (3, 3),
                    strides=stride,
                    padding=torch_padding(1),
                    name=f"conv{stage}_{j}",
                )(x)
                x = nn.elu(bn(name=f"bn{stage}_{j}")(x))
        x = conv(self.feature_dim, (3, 3), padding=torch_padding(1), name="conv_out")(x)
        x = nn.elu(bn(name="bn_out")(x))
        return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)


class ConvDecoder(nn.Module):
    """g -> image of ``input_size`` x ``input_size`` x ``out_channels`` (FTL Eq. 1)."""

    widths: Sequence[int] = (256, 128, 64, 32)
    input_size: int = 32
    out_channels: int = 3
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, g: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        bn = functools.partial(
            BatchNorm, use_running_average=not train, dtype=self.dtype, param_dtype=self.param_dtype
        )
        side = math.ceil(self.input_size / 2 ** len(self.widths))
        x = nn.Dense(
            side * side * self.widths[0], dtype=self.dtype, param_dtype=self.param_dtype, name="fc"
        )(g.astype(self.dtype))
        x = nn.elu(bn(name="bn_fc")(x)).reshape(g.shape[0], side, side, self.widths[0])
        for stage, width in enumerate(self.widths):
            x = nn.ConvTranspose(
                width,
                (3, 3),
                strides=(2, 2),
                padding="SAME",
                use_bias=False,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"deconv{stage}",
            )(x)
            x = nn.elu(bn(name=f"bn{stage}")(x))
        x = nn.Conv(
            self.out_channels,
            (3, 3),
            padding=torch_padding(1),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv_out",
        )(x)
        top = (x.shape[1] - self.input_size) // 2
        x = x[:, top : top + self.input_size, top : top + self.input_size]
        return x.astype(jnp.float32)


class FeatureFilter(nn.Module):
    """R: g -> f; linear, 2 transposed convs, 2 convs, linear (FTL §4)."""

    feature_dim: int = 320
    side: int = 4  # spatial size after the first linear layer
    widths: Sequence[int] = (128, 64, 64, 128)  # deconv1, deconv2, conv1, conv2
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, g: jnp.ndarray) -> jnp.ndarray:
        if len(self.widths) != 4:
            raise ValueError(f"filter widths must give 4 layer widths, got {self.widths}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        w = self.widths
        x = nn.Dense(self.side * self.side * w[0], name="fc_in", **kw)(g.astype(self.dtype))
        x = nn.elu(x).reshape(g.shape[0], self.side, self.side, w[0])
        for i in range(2):
            x = nn.ConvTranspose(
                w[i], (3, 3), strides=(2, 2), padding="SAME", name=f"deconv{i}", **kw
            )(x)
            x = nn.elu(x)
        for i in range(2):
            x = nn.Conv(
                w[2 + i], (3, 3), strides=2, padding=torch_padding(1), name=f"conv{i}", **kw
            )(x)
            x = nn.elu(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(
            self.feature_dim, dtype=jnp.float32, param_dtype=self.param_dtype, name="fc_out"
        )(x)
        return x.astype(jnp.float32)


class FTLNetwork(nn.Module):
    """Enc, Dec, R and FC of FTL as one module with four parameter groups (see module doc).

    ``num_classes=0`` leaves FC out (e.g. when a margin head of the core classifies f).
    ``trunk_kwargs`` is a tuple of (name, value) pairs (modules must be hashable; the
    `ftl` factory accepts a dict).
    """

    num_classes: int = 0
    feature_dim: int = 320
    input_size: int = 32
    in_channels: int = 3
    trunk: str = "conv"
    trunk_kwargs: tuple[tuple[str, Any], ...] = ()
    encoder_widths: Sequence[int] = (32, 64, 128, 256)
    filter_side: int = 4
    filter_widths: Sequence[int] = (128, 64, 64, 128)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.trunk == "conv":
            self.enc = ConvEncoder(
                widths=tuple(self.encoder_widths),
                feature_dim=self.feature_dim,
                input_size=self.input_size,
                in_channels=self.in_channels,
                **kw,
            )
        elif self.trunk == "iresnet":
            self.enc = iresnet(
                **dict(self.trunk_kwargs),
                embedding_dim=self.feature_dim,
                input_size=self.input_size,
                in_channels=self.in_channels,
                **kw,
            )
        else:
            raise ValueError(f"trunk must be one of {FTL_TRUNKS}, got {self.trunk!r}")
        self.dec = ConvDecoder(
            widths=tuple(reversed(self.encoder_widths)),
            input_size=self.input_size,
            out_channels=self.in_channels,
            **kw,
        )
        self.filter = FeatureFilter(
            feature_dim=self.feature_dim,
            side=self.filter_side,
            widths=tuple(self.filter_widths),
            **kw,
        )
        if self.num_classes:
            self.fc = nn.Dense(
                self.num_classes, use_bias=False, dtype=jnp.float32, param_dtype=self.param_dtype
            )

    def encode(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """Enc: [B, S, S, C] -> g [B, feature_dim]."""
        if x.shape[1:] != (self.input_size, self.input_size, self.in_channels):
            raise ValueError(
                f"FTL encoder expects [B, {self.input_size}, {self.input_size}, "
                f"{self.in_channels}] images, got {x.shape}"
            )
        return self.enc(x, train)

    def decode(self, g: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """Dec: g -> x' [B, S, S, C] (FTL Eq. 1)."""
        return self.dec(g, train)

    def filter_features(self, g: jnp.ndarray) -> jnp.ndarray:
        """R: g (rich or transferred, Eq. 7) -> f [B, feature_dim]."""
        return self.filter(g)

    def classify(self, f: jnp.ndarray) -> jnp.ndarray:
        """FC: f -> logits Wᵀf [B, num_classes] (FTL Eq. 2)."""
        if not self.num_classes:
            raise ValueError("this FTLNetwork has no classifier (num_classes=0)")
        return self.fc(f)

    def forward_all(self, x: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
        """{"g", "reconstruction", "f", "logits" (when num_classes)} for one batch."""
        g = self.encode(x, train)
        out = dict(g=g, reconstruction=self.decode(g, train), f=self.filter_features(g))
        if self.num_classes:
            out["logits"] = self.classify(out["f"])
        return out

    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """The recognition embedding f = R(Enc(x)) (float32, not normalised)."""
        if self.is_initializing():
            return self.forward_all(x, train)["f"]
        return self.filter_features(self.encode(x, train))


@register_model("ftl")
def ftl(
    *,
    num_classes: int = 0,
    feature_dim: int = 320,
    input_size: int = 32,
    in_channels: int = 3,
    trunk: str = "conv",
    trunk_kwargs: Mapping[str, Any] | None = None,
    encoder_widths: Sequence[int] = (32, 64, 128, 256),
    filter_side: int = 4,
    filter_widths: Sequence[int] = (128, 64, 64, 128),
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> FTLNetwork:
    """FTL's Enc/Dec/R/FC (input ``input_size`` square: 32 at synthetic scale, the paper's
    100; ``trunk="iresnet"`` needs a multiple of 16, e.g. 112)."""
    if trunk not in FTL_TRUNKS:
        raise ValueError(f"trunk must be one of {FTL_TRUNKS}, got {trunk!r}")
    if trunk_kwargs and trunk != "iresnet":
        raise ValueError(f"trunk_kwargs only apply to trunk='iresnet', got trunk={trunk!r}")
    reserved = {"embedding_dim", "input_size", "in_channels", "dtype", "param_dtype"}
    clash = reserved & set(trunk_kwargs or {})
    if clash:
        raise ValueError(f"trunk_kwargs may not set {sorted(clash)}: FTLNetwork sets them")
    if trunk == "iresnet" and input_size % 16:
        raise ValueError(f"trunk='iresnet' needs input_size a multiple of 16, got {input_size}")
    return FTLNetwork(
        num_classes=num_classes,
        feature_dim=feature_dim,
        input_size=input_size,
        in_channels=in_channels,
        trunk=trunk,
        trunk_kwargs=tuple(
            sorted(
                (k, tuple(v) if isinstance(v, (list, tuple)) else v)
                for k, v in (trunk_kwargs or {}).items()
            )
        ),
        encoder_widths=tuple(encoder_widths),
        filter_side=filter_side,
        filter_widths=tuple(filter_widths),
        dtype=dtype,
        param_dtype=param_dtype,
    )


def ftl_param_labels(params: Mapping[str, Any]) -> dict[str, Any]:
    """Pytree of group names ("enc", "dec", "filter", "fc") matching ``params`` (for
    ``optax.multi_transform`` in Alg. 1's stages)."""
    unknown = set(params) - set(FTL_GROUPS)
    if unknown:
        raise ValueError(f"not FTL parameter groups: {sorted(unknown)}; expected {FTL_GROUPS}")
    return {key: jax.tree.map(lambda _, k=key: k, value) for key, value in params.items()}
