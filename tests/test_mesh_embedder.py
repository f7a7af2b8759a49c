"""`MeshEmbedder`: one compilation per embedding function, shared by every embedder of it."""

import jax
import jax.numpy as jnp
import numpy as np

from hfrjax.eval.embedding import MeshEmbedder
from hfrjax.models import get_model
from hfrjax.tasks.classification import backbone_embed
from hfrjax.train import mesh as mesh_lib

TINY = dict(layers=(1, 1, 1, 1), base_width=4, embedding_dim=8, input_size=16)


def test_embedders_of_one_function_trace_it_once_and_use_their_own_weights():
    traces = []

    def embed(params, model_state, images, modality, train_bn=False):
        traces.append(train_bn)  # Runs only while jax traces.
        return images.reshape(len(images), -1).astype(jnp.float32) * params["s"]

    mesh = mesh_lib.make_mesh()
    x = np.random.default_rng(0).integers(1, 255, (4, 2, 2, 1), dtype=np.uint8)
    a = MeshEmbedder(embed, {"s": jnp.float32(1.0)}, {}, mesh)(x)
    b = MeshEmbedder(embed, {"s": jnp.float32(-1.0)}, {}, mesh)(x)
    np.testing.assert_allclose(a, -b, rtol=1e-6)  # Each embedder runs its own parameters.
    assert traces == [False]
    MeshEmbedder(embed, {"s": jnp.float32(1.0)}, {}, mesh, train_bn=True)(x)
    assert traces == [False, True]


def test_backbone_embed_is_one_function_per_backbone_configuration():
    one, same, other = (
        get_model("iresnet", **TINY),
        get_model("iresnet", **TINY),
        get_model("iresnet", **dict(TINY, embedding_dim=16)),
    )
    assert backbone_embed(one) is backbone_embed(same)
    assert backbone_embed(one) is not backbone_embed(other)
    v = one.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)
    x = np.random.default_rng(1).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)
    emb = MeshEmbedder(
        backbone_embed(one),
        {"backbone": v["params"]},
        {"batch_stats": v["batch_stats"]},
        mesh_lib.make_mesh(),
    )(x)
    want = one.apply(v, jnp.asarray(x, jnp.float32) / 127.5 - 1.0, train=False)
    want = np.asarray(want) / np.linalg.norm(np.asarray(want), axis=1, keepdims=True)
    np.testing.assert_allclose(emb, want, rtol=1e-4, atol=1e-5)
