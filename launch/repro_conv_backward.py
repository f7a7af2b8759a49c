"""Standalone reproducer: 2-D convolutions forward + backward, JAX (XLA:CPU) vs PyTorch.

  python launch/repro_conv_backward.py [--batch=32] [--layers=ir18|mfn|one] [--rounds=5]
      [--grouped_impls=conv,shifts,fused]
      [--xla_flags="--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"]

Needs only numpy, jax and torch (hfrjax is optional: it adds the ``fused`` rows), so it can be
attached to an upstream report. For each convolution shape of a face-recognition trunk at 112x112
input (``ir18``: IResNet-18's 3x3 convs, stride 1 or 2; ``mfn``: MobileFaceNet's grouped /
depthwise 3x3 convs; NHWC in JAX, NCHW in PyTorch, float32, no bias) it times

  fwd   y = conv(x, w)
  bwd   (y, dx, dw): forward, then the vjp with a random cotangent (input and kernel gradients)

JAX and PyTorch run in the same process on the same cores (``taskset -c 0`` for one), in
alternating rounds, so that a machine under changing load penalises both alike; the best round
of each is reported with the ratio JAX / PyTorch. ``--xla_flags`` is put in XLA_FLAGS before
jax is imported. Grouped convolutions are timed several ways on the JAX side: as XLA
convolutions (``feature_group_count``), as a sum of shifted slices (``shifts``: one multiply-add per
kernel tap, autodiffed) and, when hfrjax is importable, as ``fused``
(``hfrjax.models.depthwise_cpu.grouped_conv_cpu``: a custom vjp whose forward, input gradient
and kernel gradient are each fused loops over shifted slices; what hfrjax uses on CPU).

Finding (jax/jaxlib 0.10.2, x86_64): XLA:CPU hands 2-D float32 convolutions to YNNPACK by
default, and YNNPACK's kernel-gradient convolution (a convolution whose "kernel" is the whole
output-gradient map) is 5-10x slower than PyTorch's (oneDNN) on IResNet shapes; with
``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` XLA's own (Eigen)
convolutions are used and are on par with PyTorch.
"""

from __future__ import annotations

import argparse
import os
import time

SHAPES = {
    # (H=W of the input, C_in, C_out, kernel, stride, groups): every distinct conv of
    # IResNet-18 at 112x112.
    "ir18": [
        (112, 3, 64, 3, 1, 1),  # stem
        (112, 64, 64, 3, 1, 1),  # layer1 conv1
        (112, 64, 64, 3, 2, 1),  # layer1 conv2 (stride on the second conv)
        (56, 64, 128, 3, 1, 1),
        (56, 128, 128, 3, 2, 1),
        (28, 128, 128, 3, 1, 1),
        (28, 128, 256, 3, 1, 1),
        (28, 256, 256, 3, 2, 1),
        (14, 256, 512, 3, 1, 1),
        (14, 512, 512, 3, 2, 1),
        (7, 512, 512, 3, 1, 1),
        (112, 64, 64, 1, 2, 1),  # 1x1 stride-2 shortcut
    ],
    # MobileFaceNet (arcface_torch get_mbf) grouped and depthwise convs at 112x112.
    "mfn": [
        (56, 128, 128, 3, 1, 64),  # stem_dw: groups of 2 channels
        (56, 128, 128, 3, 2, 128),  # down1 depthwise
        (28, 128, 128, 3, 1, 128),  # stage1 depthwise
        (28, 256, 256, 3, 2, 256),  # down2
        (14, 256, 256, 3, 1, 256),  # stage2
        (14, 512, 512, 3, 2, 512),  # down3
        (7, 256, 256, 3, 1, 256),  # stage3
    ],
    "one": [(56, 64, 128, 3, 1, 1)],
}


def conv_lax(x, w, stride, pad, groups):
    import jax

    return jax.lax.conv_general_dilated(
        x,
        w,
        (stride, stride),
        ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


def conv_shifts(x, w, stride, pad, groups):
    """The same grouped conv as a sum over taps of strided slices times the tap's kernel."""
    import jax.numpy as jnp

    kh, kw, g_in, c_out = w.shape
    g_out = c_out // groups
    x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    n = x.shape[0]
    h, wd = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            p = x[:, i : i + stride * (h - 1) + 1 : stride, j : j + stride * (wd - 1) + 1 : stride]
            if g_in == 1 and g_out == 1:
                term = p * w[i, j, 0]
            else:
                k = w[i, j].reshape(g_in, groups, g_out)
                term = jnp.einsum("nhwgk,kgo->nhwgo", p.reshape(n, h, wd, groups, g_in), k).reshape(
                    n, h, wd, c_out
                )
            out = term if out is None else out + term
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--layers", default="ir18", choices=sorted(SHAPES))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--xla_flags", default="")
    ap.add_argument(
        "--grouped_impls",
        default="conv,shifts,fused",
        help="JAX forms timed for grouped convs (comma-separated; 'conv' is very slow at batch 128)",
    )
    args = ap.parse_args()
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    try:  # hfrjax's custom-vjp form, when the package is importable (optional).
        from hfrjax.models.depthwise_cpu import grouped_conv_cpu as conv_fused
    except ImportError:
        conv_fused = None
    cores = len(os.sched_getaffinity(0))  # `taskset -c 0` -> 1; XLA:CPU sizes its pool alike.
    torch.set_num_threads(cores)
    rng = np.random.default_rng(0)
    print(
        f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{cores} of {os.cpu_count()} CPUs, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
        f"batch {args.batch}, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        "| H | C_in | C_out | k | s | groups | JAX impl | JAX fwd ms | torch fwd ms | fwd ratio "
        "| JAX fwd+bwd ms | torch fwd+bwd ms | fwd+bwd ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    totals: dict[str, np.ndarray] = {}
    for h, cin, cout, k, s, groups in SHAPES[args.layers]:
        pad = k // 2
        x = rng.standard_normal((args.batch, h, h, cin), dtype=np.float32)
        w = rng.standard_normal((k, k, cin // groups, cout)) / np.sqrt(k * k * cin / groups)
        w = w.astype(np.float32)
        impls = {"conv": conv_lax}
        if groups > 1:
            impls = {"conv": conv_lax, "shifts": conv_shifts, "fused": conv_fused}
            wanted = args.grouped_impls.split(",")
            impls = {k: f for k, f in impls.items() if k in wanted and f is not None}
        xj, wj = jnp.asarray(x), jnp.asarray(w)
        ct = None
        cases = {}
        for name, impl in impls.items():

            def conv(x, w, impl=impl):
                return impl(x, w, s, pad, groups)

            fwd = jax.jit(conv)
            if ct is None:
                ct = jnp.asarray(rng.standard_normal(fwd(xj, wj).shape, dtype=np.float32))

            @jax.jit
            def fwd_bwd(x, w, ct, conv=conv):
                y, vjp = jax.vjp(conv, x, w)
                return y, *vjp(ct)

            cases[f"{name} fwd"] = lambda fwd=fwd: jax.block_until_ready(fwd(xj, wj))
            cases[f"{name} bwd"] = lambda f=fwd_bwd: jax.block_until_ready(f(xj, wj, ct))

        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
        wt = torch.from_numpy(w.transpose(3, 2, 0, 1).copy()).requires_grad_(True)
        ctt = torch.from_numpy(np.asarray(ct).transpose(0, 3, 1, 2).copy())

        def t_fwd():
            with torch.no_grad():
                return torch.nn.functional.conv2d(xt, wt, stride=s, padding=pad, groups=groups)

        def t_fwd_bwd():
            xt.grad = wt.grad = None
            y = torch.nn.functional.conv2d(xt, wt, stride=s, padding=pad, groups=groups)
            y.backward(ctt)
            return xt.grad

        cases["torch fwd"], cases["torch bwd"] = t_fwd, t_fwd_bwd
        for c in cases.values():  # Compile and warm up.
            c()
            c()
        best = dict.fromkeys(cases, float("inf"))
        for _ in range(args.rounds):
            for name, c in cases.items():
                t = time.perf_counter()
                c()
                best[name] = min(best[name], time.perf_counter() - t)
        for name in impls:
            ms = np.array(
                [best[f"{name} fwd"], best["torch fwd"], best[f"{name} bwd"], best["torch bwd"]]
            )
            ms *= 1e3
            totals[name] = totals.get(name, 0) + ms
            print(
                f"| {h} | {cin} | {cout} | {k} | {s} | {groups} | {name} | {ms[0]:.1f} | "
                f"{ms[1]:.1f} | {ms[0] / ms[1]:.2f} | {ms[2]:.1f} | {ms[3]:.1f} | "
                f"{ms[2] / ms[3]:.2f} |",
                flush=True,
            )
    for name, t in totals.items():
        print(
            f"| all | | | | | | {name} | {t[0]:.1f} | {t[1]:.1f} | {t[0] / t[1]:.2f} "
            f"| {t[2]:.1f} | {t[3]:.1f} | {t[2] / t[3]:.2f} |"
        )
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
