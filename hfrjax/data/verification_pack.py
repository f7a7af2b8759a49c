"""InsightFace verification packs (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``, ...), read safely.

A pack is a pickle of ``(images, issame)``: ``images`` a list of 2N encoded JPEG/PNG files
(pair i is images 2i and 2i+1), ``issame`` N booleans. Packs were written under Python 2 and 3,
so images are ``bytes`` (Python 2 ``str``), ``bytearray`` or uint8 numpy arrays, and the flags
a list of bools or a numpy bool array.

Unpickling runs whatever callables a file names, so a downloaded pack must not be loaded with
plain ``pickle.load``: `load_pack` resolves only the few globals such files need (numpy's array
and scalar reconstruction, ``bytearray``, latin-1 ``_codecs.encode`` for bytes pickled by Python
3 at protocol 2) and refuses every other one, naming it and the file.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct, scalar
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar
    from numpy.core.numeric import _frombuffer


class PackError(ValueError):
    """A verification pack that cannot be used; the message names the file and what is wrong."""


def _latin1_encode(obj, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as Python 3 pickles ``bytes`` at protocol <= 2, latin-1 only."""
    if encoding not in ("latin1", "latin-1") or not isinstance(obj, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return obj.encode("latin-1", errors)


_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_ALLOWED = {
    **{(m, "_reconstruct"): _reconstruct for m in _NUMPY_MODULES},
    **{(m, "scalar"): scalar for m in _NUMPY_MODULES},
    **{(m, "_frombuffer"): _frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("builtins", "bytearray"): bytearray,
    ("__builtin__", "bytearray"): bytearray,
    ("_codecs", "encode"): _latin1_encode,
}


class _PackUnpickler(pickle.Unpickler):
    """Resolves only `_ALLOWED` globals; anything else is refused before it can run."""

    def __init__(self, file, path: str, **kwargs):
        super().__init__(file, **kwargs)
        self._path = path

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"{self._path}: refusing to load global {module}.{name}: a verification pack "
                "needs only lists of image bytes, bools and numpy arrays (is it really one?)"
            ) from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"{self._path}: persistent ids are not allowed ({pid!r})")


def safe_unpickle(data: bytes, path: str = "<bytes>"):
    """``data`` unpickled with only the pack globals allowed; Python 2 ``str`` become bytes
    when they are not ASCII text (as InsightFace's ``load_bin`` retries with
    ``encoding="bytes"``)."""
    try:
        return _PackUnpickler(io.BytesIO(data), path).load()
    except UnicodeDecodeError:  # Python 2 str holding binary data: keep it as bytes.
        return _PackUnpickler(io.BytesIO(data), path, encoding="bytes").load()


def _as_bytes(img, i: int, path: str) -> bytes:
    if isinstance(img, bytes):
        return img
    if isinstance(img, (bytearray, memoryview)):
        return bytes(img)
    if isinstance(img, np.ndarray):
        if img.dtype not in (np.uint8, np.int8) or img.ndim != 1:
            raise PackError(
                f"{path}: image {i} is a numpy array of dtype {img.dtype} and shape {img.shape};"
                " expected 1-D uint8 (encoded file bytes)"
            )
        return img.tobytes()
    raise PackError(f"{path}: image {i} is a {type(img).__name__}; expected encoded image bytes")


def _as_flags(issame, path: str) -> np.ndarray:
    if isinstance(issame, np.ndarray):
        if issame.ndim != 1:
            raise PackError(f"{path}: is-same flags must be 1-D, got shape {issame.shape}")
        values = issame.tolist()
    elif isinstance(issame, (list, tuple)):
        values = list(issame)
    else:
        raise PackError(
            f"{path}: is-same flags are a {type(issame).__name__}; expected a list of bools"
        )
    flags = []
    for i, v in enumerate(values):
        v = v.item() if isinstance(v, np.generic) else v
        if not (isinstance(v, bool) or (isinstance(v, int) and v in (0, 1))):
            raise PackError(f"{path}: is-same flag {i} is {v!r}; expected a bool")
        flags.append(bool(v))
    return np.asarray(flags, dtype=bool)


def parse_pack(obj, path: str = "<pack>") -> tuple[list[bytes], np.ndarray]:
    """(images, issame) from an unpickled pack object, checked (module docstring)."""
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        what = f"a {type(obj).__name__}"
        if isinstance(obj, (tuple, list)):
            what += f" of length {len(obj)}"
        raise PackError(f"{path}: expected a pickled (images, issame) pair, got {what}")
    images, issame = obj
    if isinstance(images, np.ndarray) and images.dtype == object and images.ndim == 1:
        images = list(images)
    if not isinstance(images, (list, tuple)):
        raise PackError(
            f"{path}: images are a {type(images).__name__}; expected a list of encoded images"
        )
    flags = _as_flags(issame, path)
    if len(flags) == 0:
        raise PackError(f"{path}: the pack holds no pairs")
    if len(images) != 2 * len(flags):
        raise PackError(
            f"{path}: {len(images)} images for {len(flags)} pairs; expected 2 x {len(flags)} ="
            f" {2 * len(flags)} (images come in consecutive pairs)"
        )
    return [_as_bytes(img, i, path) for i, img in enumerate(images)], flags


def load_pack(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
    """(2N encoded images, N bool is-same flags) of the pack at ``path``, unpickled safely."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PackError(f"verification pack {path} does not exist") from None
    try:
        obj = safe_unpickle(data, str(path))
    except pickle.UnpicklingError as e:
        raise PackError(str(e) if str(path) in str(e) else f"{path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a corrupt pickle fails in many ways; name the file.
        raise PackError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None
    return parse_pack(obj, str(path))
