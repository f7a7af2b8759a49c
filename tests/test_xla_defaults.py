"""hfrjax's default XLA:CPU options (hfrjax/xla_defaults.py): when they apply, that XLA accepts
them (it aborts on unknown flags), and that convolution gradients do not change with them."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hfrjax import xla_defaults

SCRIPT = """
import json, os, sys
import hfrjax, jax, jax.numpy as jnp, numpy as np
x = np.random.default_rng(0).normal(size=(2, 12, 12, 8)).astype(np.float32)
w = np.random.default_rng(1).normal(size=(3, 3, 8, 16)).astype(np.float32)
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (2, 2), "SAME",
    dimension_numbers=("NHWC", "HWIO", "NHWC"))
y, vjp = jax.vjp(conv, x, w)
dx, dw = vjp(jnp.ones_like(y))
print(json.dumps({"flags": os.environ.get("XLA_FLAGS", ""), "dw": np.asarray(dw).tolist(),
                  "dx": np.asarray(dx).ravel()[:50].tolist()}))
"""


def _run(**env):
    e = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "HFRJAX_XLA_DEFAULTS")}
    e.update(env)
    p = subprocess.run([sys.executable, "-c", SCRIPT], env=e, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_opt_outs():
    assert not xla_defaults.cpu_defaults_apply({"HFRJAX_XLA_DEFAULTS": "0"})
    flags = f"{xla_defaults.YNN_CONV_OPTION}=individual_convolution"
    assert not xla_defaults.cpu_defaults_apply({"XLA_FLAGS": flags})  # The user's choice wins.


@pytest.mark.skipif(
    not xla_defaults.cpu_defaults_apply({}), reason="untested jaxlib or an accelerator plugin"
)
def test_options_are_accepted_and_gradients_unchanged():
    on, off = _run(), _run(HFRJAX_XLA_DEFAULTS="0")
    assert on["flags"] == " ".join(xla_defaults.CPU_DEFAULTS)  # XLA started with them.
    assert off["flags"] == ""
    np.testing.assert_allclose(on["dw"], off["dw"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(on["dx"], off["dx"], rtol=1e-5, atol=1e-4)
    # A user's own XLA_FLAGS are kept, with the defaults appended.
    kept = _run(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    assert kept["flags"].split() == ["--xla_force_host_platform_device_count=2", *xla_defaults.CPU_DEFAULTS]
