"""Procedural NIR-VIS, thermal-visible and long-tailed faces: the library's embedded data.

The real NIR-VIS datasets cannot be downloaded everywhere, so the main training job and the
tests run on faces rendered here with numpy alone (no external assets). Everything is
deterministic from a seed, and built so that the HFR problem keeps its shape: identity lives
in geometry and pigmentation that both spectra see, while colour, illumination and sensor
differ between them. A network pretrained on the VIS source set therefore learns identity
features that partly transfer to NIR; fine-tuning on the NIR-VIS target set and red-channel
augmentation (NIR looks like the red end of the visible spectrum) both shrink the gap.

Image formation
---------------
Every image is a radiance map composited from layers (background, clothing, ears, face skin,
eyes, brows, nostrils, mouth, beard, hair, glasses), each with an anti-aliased coverage mask
and a spectral reflectance given in five bands: R (~610 nm), G (~550 nm), B (~465 nm),
NIR850 and NIR940. A VIS camera sees the first three, an NIR camera one of the last two.

* Geometry. An identity is a set of feature shapes in a face frame (units of half the
  inter-ocular distance, origin near the nose bridge) and a depth map (head ellipsoid, nose
  ridge, eye sockets, brow ridge, cheekbones, lips, chin). A sample's head pose is applied as
  an inverse warp of the pixel grid: roll and alignment jitter are a similarity transform,
  yaw and pitch shift each face point by its depth times sin(angle) (foreshortening), pivoting
  about the eye plane so the five landmarks stay near the ArcFace 112x112 template, as in an
  aligned crop. Expressions (smile, open mouth, raised/lowered brows, eye closure) move the
  feature shapes.
* Skin. Pigmentation is physical: melanin and haemoglobin concentrations (per identity, with
  an identity-seeded texture field of freckles, moles, blotches and low-frequency variation)
  give band reflectance by Beer-Lambert attenuation of a dermal scattering base,
  ``rho_band = base_band * exp(-(c_mel * mu_mel_band + c_hb * mu_hb_band))``. Melanin
  absorption falls as ~lambda^-3.3, haemoglobin absorbs green and blue strongly, red weakly
  and NIR hardly at all. Consequently, at 850 nm skin is bright and nearly independent of
  melanin: the NIR value of a surface is close to a monotone function of its red
  reflectance, colour contrast vanishes, freckles and lips fade, moles stay faintly visible.
  Hair and irises use eumelanin/pheomelanin in the same way, so dark hair and brows stay
  somewhat dark in NIR while brown irises turn light grey. Clothing dyes and glasses frames
  get NIR reflectances drawn independently of their colour, as real dyes do.
* VIS illumination: a directional key light of random direction, intensity and colour
  temperature (Planck's law) plus a tinted ambient term, Lambertian shading from the depth
  normals and a weak specular sheen; auto exposure with a random bias (metering the face
  against a grey card, so it only half-compensates skin tone); camera tone curve
  (gamma ~2.2), slight blur, mild noise; stored as JPEG.
* NIR illumination: an active LED ring next to the lens, so light comes from near the
  viewing direction (flat, frontal shading, strong specular glints on skin, corneas and
  glasses lenses), its irradiance falls off radially from the image centre and the
  background, being farther away, is dark. Ambient light contributes little. The sensor has
  its own gamma and contrast, shot plus read noise, vignetting and blur, and writes one
  channel (H x W x 1), stored losslessly as PNG by default (CASIA ships NIR as BMP).
* The cross-dataset sensor (``nir940``) imitates a 940 nm camera: skin a little darker
  (water absorption), even weaker melanin contrast, lower contrast, more noise, stronger
  vignetting and LED falloff, a different gamma. Its captures are less diverse (a few fixed
  poses, expressions and lighting conditions, like Oulu-CASIA or BUAA-VisNir).
* Thermal (modality ``"thermal"``, long-wave infrared, `thermal`): emitted heat instead of
  reflected light, the same geometry; skin temperatures (warm inner eye corners and
  forehead, cool nose tip, ears and hair), opaque cold glasses, a low-resolution
  microbolometer with fixed-pattern noise; one channel.

Datasets and protocol
---------------------
The NIR-VIS presets (``tiny``, ``quickstart``, ``small``, ``large``): `generate` writes three
dataset directories (TFRecord shards + ``dataset.json``, see
`hfrjax.data.dataset`) with disjoint identities. As in CASIA NIR-VIS 2.0, the VIS and NIR
images of an identity are separate captures (own pose, expression, light), not pixel pairs.

* ``source/`` (``synth_source``): VIS only, many identities, web-like variation; for
  pretraining. Identities ``src00000``...
* ``target/`` (``synth_nirvis``): VIS and NIR images of other identities (``tgt00000``...),
  with a 10-fold protocol laid out like CASIA NIR-VIS 2.0 View 2: per fold the identities are
  split at random into disjoint train and test halves; the train lists hold all VIS and NIR
  images of the train identities, the gallery exactly one VIS image per test identity (drawn
  at random per fold) and the probes all NIR images of the test identities.
* ``target_cross/`` (``synth_nirvis_cross``): a second NIR-VIS set (``crs00000``...) with the
  940 nm sensor and low diversity, its own 10-fold protocol; the gallery is each test
  identity's neutral frontal VIS image (sample 0), as in BUAA-VisNir.

Sample keys are ``<identity>/<modality>/<nnn>``; labels are contiguous per dataset, in
identity order. VIS is stored as JPEG (quality 92), NIR as greyscale PNG (configurable in
`SynthConfig`; each record carries its format, ``dataset.json`` says ``mixed``). Each
identity is rendered from its own child of ``np.random.SeedSequence(seed)``, so the output
is byte-identical for any number of worker processes, growing a set only appends
identities, and per-sample nuisance parameters need not be stored: `identity_captures`
regenerates them.

The thermal-visible presets (``thermal_tiny``, ``thermal_vis``) write ``thermal_vis/``:
time-synchronised visible/thermal pairs with an ARL-VTF-style protocol, one fold per (probe
set, gallery set) named like ``"P_TB0|G_VB0-"`` (`thermal_vis`). The long-tailed presets
(``longtail_tiny``, ``longtail``) write ``longtail/train_<10K0K|10K10K|10K30K|10K50K|60K0K>/``
and ``longtail/holdout/`` (with ``pairs.txt`` and an InsightFace ``verification.bin``) in the
FTL paper's Table 1 layout, every record carrying its head yaw (`longtail`).

Package layout
--------------
``spectral`` (band reflectances), ``identity`` (`IdentityParams`, `sample_identity`),
``variation`` (`Variation` presets, `SampleParams`, `sample_params`), ``geometry`` (face
frame, pose warp, `landmarks`), ``painters`` (layer compositing), ``rendering`` (`render`),
``sensors`` (`Sensor`, `SENSORS`, the camera model), ``thermal`` (`render_thermal`, heat
signature, microbolometer), ``presets`` (`SetSpec`, `SynthConfig`, `PRESETS`), ``writing``
(seeding, encoding, parallel map), ``generation`` (`generate`, `identity_captures`,
`make_protocol`), ``thermal_vis`` (`ThermalVisConfig`, `make_arlvtf_protocol`) and
``longtail`` (`LongTailConfig`, `verification_pairs`, `read_pairs`).

Public API
----------
`generate` (datasets on disk), `PRESETS` / `preset_config` / `SynthConfig` / `SetSpec`;
the pure pieces `sample_identity`, `sample_params`, `render`, `landmarks`,
`identity_captures`, `render_identity_images`, `make_protocol`, `skin_reflectance`,
`SENSORS` and the `Variation` presets; thermal: `render_thermal`, `sample_thermal_traits`,
`sample_thermal_conditions`, `THERMAL_SENSORS`, `thermal_vis_captures`,
`render_thermal_vis_images`, `glasses_wearers`, `make_arlvtf_protocol`; long-tailed:
`longtail_captures`, `verification_pairs`, `read_pairs`; all importable from this package.
"""

from hfrjax.data.synthetic.generation import (
    encode_image,
    generate,
    identity_captures,
    identity_name,
    make_protocol,
    render_identity_images,
    sample_key,
)
from hfrjax.data.synthetic.geometry import ARCFACE_TEMPLATE_112, landmarks
from hfrjax.data.synthetic.identity import IdentityParams, sample_identity
from hfrjax.data.synthetic.longtail import (
    LongTailConfig,
    LongTailSpec,
    longtail_captures,
    read_pairs,
    verification_pairs,
)
from hfrjax.data.synthetic.presets import PRESETS, SetSpec, SynthConfig, preset_config
from hfrjax.data.synthetic.rendering import render
from hfrjax.data.synthetic.sensors import SENSORS, Sensor
from hfrjax.data.synthetic.spectral import BANDS, skin_reflectance
from hfrjax.data.synthetic.thermal import (
    THERMAL_MODALITY,
    THERMAL_SENSORS,
    ThermalConditions,
    ThermalSensor,
    ThermalTraits,
    render_thermal,
    sample_thermal_conditions,
    sample_thermal_traits,
)
from hfrjax.data.synthetic.thermal_vis import (
    GALLERY_SETS,
    PROBE_SETS,
    ThermalVisConfig,
    ThermalVisSpec,
    capture_plan,
    glasses_wearers,
    make_arlvtf_protocol,
    render_thermal_vis_images,
    thermal_vis_captures,
)
from hfrjax.data.synthetic.variation import (
    LAB_VARIATION,
    LOW_DIVERSITY_VARIATION,
    WEB_VARIATION,
    Light,
    Modality,
    SampleParams,
    Variation,
    sample_params,
)

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "BANDS",
    "GALLERY_SETS",
    "LongTailConfig",
    "LongTailSpec",
    "longtail_captures",
    "read_pairs",
    "verification_pairs",
    "PROBE_SETS",
    "THERMAL_MODALITY",
    "THERMAL_SENSORS",
    "ThermalConditions",
    "ThermalSensor",
    "ThermalTraits",
    "ThermalVisConfig",
    "ThermalVisSpec",
    "capture_plan",
    "glasses_wearers",
    "make_arlvtf_protocol",
    "render_thermal",
    "render_thermal_vis_images",
    "sample_thermal_conditions",
    "sample_thermal_traits",
    "thermal_vis_captures",
    "LAB_VARIATION",
    "LOW_DIVERSITY_VARIATION",
    "PRESETS",
    "SENSORS",
    "WEB_VARIATION",
    "IdentityParams",
    "Light",
    "Modality",
    "SampleParams",
    "Sensor",
    "SetSpec",
    "SynthConfig",
    "Variation",
    "encode_image",
    "generate",
    "identity_captures",
    "identity_name",
    "landmarks",
    "make_protocol",
    "preset_config",
    "render",
    "render_identity_images",
    "sample_identity",
    "sample_key",
    "sample_params",
    "skin_reflectance",
]
