"""Face-recognition backbones (flax.linen, NHWC, ``__call__(x, train)``) and a name registry.

Importing this package registers: ``iresnet`` (generic), ``ir18``, ``ir34``, ``ir50``,
``ir100``, ``mobilefacenet``, ``lightcnn29v2``; for the recipes ``lightcnn29v2_psb`` (SSN),
``mobilenetv3_large``, ``mobilenetv3_large_dual``, ``mobilenetv3_large_souped`` (TOPLight),
``vgg16_conv3`` and ``csan`` (CSAN), ``ftl`` (FTL).

Conventions shared by all backbones:
* ``model.apply(variables, x, train=...)`` with ``x`` [B, H, W, C]; BatchNorm statistics live
  in the ``'batch_stats'`` collection (pass ``mutable=['batch_stats']`` when ``train``),
  dropout (IResNet only, default rate 0) needs a ``'dropout'`` rng when active.
* ``model.input_size`` / ``model.in_channels`` give the expected input (``dummy_input``).
  Input scaling is the data pipeline's job: InsightFace models were trained on
  (pixel / 255 - 0.5) / 0.5 RGB, LightCNN on grayscale in [0, 1].
* ``dtype`` sets the computation dtype (e.g. bfloat16), parameters stay ``param_dtype``
  (float32); the returned embedding is always float32 and *not* L2-normalised.
"""

from hfrjax.models import (  # noqa: F401,I001 - recipe models register themselves on import
    cross_spectral_attention,
    dual_path,
    fdr,
    ftl_modules,
    mobilenetv3,
    saliency,
    vgg,
)
from hfrjax.models.convert import convert_state_dict, strip_prefix
from hfrjax.models.iresnet import (
    IRESNET_LAYERS,
    IBasicBlock,
    IResNet,
    iresnet,
    iresnet_config_from_torch_state_dict,
    iresnet_params_from_torch_state_dict,
)
from hfrjax.models.layers import MFM, PReLU
from hfrjax.models.lightcnn import (
    LightCNN29v2,
    lightcnn29v2,
    lightcnn_config_from_torch_state_dict,
    lightcnn_params_from_torch_state_dict,
)
from hfrjax.models.mobilefacenet import MobileFaceNet, mobilefacenet
from hfrjax.models.registry import dummy_input, get_model, list_models, register_model

__all__ = [
    "IRESNET_LAYERS",
    "IBasicBlock",
    "IResNet",
    "LightCNN29v2",
    "MFM",
    "MobileFaceNet",
    "PReLU",
    "convert_state_dict",
    "dummy_input",
    "get_model",
    "iresnet",
    "iresnet_config_from_torch_state_dict",
    "iresnet_params_from_torch_state_dict",
    "lightcnn29v2",
    "lightcnn_config_from_torch_state_dict",
    "lightcnn_params_from_torch_state_dict",
    "list_models",
    "mobilefacenet",
    "register_model",
    "strip_prefix",
]
