"""Embedding many faces with any model format: batching, progress, resumable output.

``embed_images(model, images, out_dir)`` writes

    out_dir/embeddings.npy   float32 [N, D], L2-normalised (cosine similarity = dot product)
    out_dir/keys.json        {"keys": [...], "identities": [...], "model": ..., "skipped": ...}

Work in progress lives in ``out_dir/partial/`` (one ``.npz`` chunk every ``chunk_size``
images plus a manifest naming the model fingerprint and the input list); an interrupted run
started again with the same arguments continues after the last chunk, and the chunks are
merged (in input order) when every image is done. Any batch size works: the last batch is
padded for the jit-compiled formats so they compile once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

from hfrjax.deploy.backends import ONNX, EmbeddingModel
from hfrjax.deploy.inputs import FaceReader, ImageReadError, ImageSet
from hfrjax.deploy.progress import Progress

EMBEDDINGS = "embeddings.npy"
KEYS = "keys.json"
PARTIAL = "partial"
MANIFEST = "manifest.json"


@dataclasses.dataclass
class EmbeddingSet:
    """Embeddings with their keys and identities (`embed_images`' output, or in memory)."""

    embeddings: np.ndarray  # float32 [N, D], unit rows.
    keys: list[str]
    identities: list[str | None]
    meta: dict

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "EmbeddingSet":
        from hfrjax.fileio import read_json

        d = Path(directory)
        if not (d / EMBEDDINGS).exists() or not (d / KEYS).exists():
            partial = " (an unfinished `hfrjax embed` run: start it again to finish)" if (
                d / PARTIAL
            ).exists() else ""
            raise FileNotFoundError(
                f"{d} holds no {EMBEDDINGS} + {KEYS} from `hfrjax embed`{partial}"
            )
        meta = read_json(d / KEYS)
        emb = np.load(d / EMBEDDINGS, allow_pickle=False)
        keys = list(meta.get("keys", []))
        if emb.ndim != 2 or emb.shape[0] != len(keys):
            raise ValueError(
                f"{d}: {EMBEDDINGS} has shape {emb.shape} but {KEYS} lists {len(keys)} keys"
            )
        ids = meta.get("identities") or [None] * len(keys)
        return cls(np.asarray(emb, np.float32), keys, list(ids), meta)


def _list_digest(images: ImageSet) -> str:
    h = hashlib.sha256()
    for r in images.refs:
        h.update(r.key.encode() + b"\0" + (r.identity or "").encode() + b"\n")
    return h.hexdigest()


def iter_faces(
    images: ImageSet,
    reader: FaceReader,
    indices: list[int],
    *,
    skip_bad: bool,
    threads: int = 2,
) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """(index, crop or None, error or None) in ``indices`` order, decoded by a thread pool
    (PIL, simplejpeg and pyspng release the GIL)."""

    def load(i: int):
        try:
            return i, reader(images, images.refs[i]), None
        except ImageReadError as e:
            if not skip_bad:
                raise
            return i, None, str(e)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        window = max(8, 4 * threads)
        pending = []
        for i in indices:
            pending.append(pool.submit(load, i))
            if len(pending) >= window:
                yield pending.pop(0).result()
        for f in pending:
            yield f.result()


def embed_batch(model: EmbeddingModel, crops: list[np.ndarray], batch_size: int) -> np.ndarray:
    """L2-normalised embeddings of ``crops``; jit formats see exactly ``batch_size`` rows."""
    x = np.stack(crops)
    n = len(x)
    if model.kind != ONNX and n < batch_size:
        x = np.concatenate([x, np.zeros((batch_size - n, *x.shape[1:]), x.dtype)])
    return model.embed(x)[:n]


def embed_in_memory(
    model: EmbeddingModel,
    images: ImageSet,
    reader: FaceReader,
    *,
    batch_size: int = 64,
    skip_bad: bool = False,
    progress: bool = True,
    desc: str = "embed",
) -> tuple[EmbeddingSet, list[dict]]:
    """Embeds without writing anything (for `verify` / `search` on images); returns the set
    and the skipped images [{"key", "error"}]."""
    embs, keys, ids, skipped = [], [], [], []
    bar = Progress(len(images), desc, enabled=progress)
    batch: list[tuple[int, np.ndarray]] = []

    def flush():
        if batch:
            embs.append(embed_batch(model, [c for _, c in batch], batch_size))
            for i, _ in batch:
                keys.append(images.refs[i].key)
                ids.append(images.refs[i].identity)
            bar.update(len(batch))
            batch.clear()

    for i, crop, err in iter_faces(images, reader, list(range(len(images))), skip_bad=skip_bad):
        if crop is None:
            skipped.append({"key": images.refs[i].key, "error": err})
            bar.update(1)
            continue
        batch.append((i, crop))
        if len(batch) == batch_size:
            flush()
    flush()
    bar.close()
    emb = np.concatenate(embs) if embs else np.zeros((0, model.embedding_dim), np.float32)
    meta = {"model": str(model.path), "model_kind": model.kind, "source": images.spec}
    return EmbeddingSet(emb, keys, ids, meta), skipped


def embed_images(
    model: EmbeddingModel,
    images: ImageSet,
    out_dir: str | os.PathLike,
    reader: FaceReader,
    *,
    batch_size: int = 64,
    chunk_size: int = 1024,
    skip_bad: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> EmbeddingSet:
    """Embeds ``images`` into ``out_dir`` (module docstring), resuming a previous run."""
    from hfrjax.fileio import atomic_output, read_json, write_text_atomic

    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size}, {chunk_size}")
    out = Path(out_dir)
    part = out / PARTIAL
    if overwrite:
        for name in (EMBEDDINGS, KEYS):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(part, ignore_errors=True)
    if (out / EMBEDDINGS).exists() and (out / KEYS).exists():
        raise FileExistsError(
            f"{out} already holds a finished embedding run; pass --overwrite to redo it"
        )
    manifest = {
        "model": str(model.path),
        "model_kind": model.kind,
        "model_fingerprint": model.fingerprint(),
        "embedding_dim": model.embedding_dim,
        "source": images.spec,
        "num_images": len(images),
        "list_sha256": _list_digest(images),
        "landmarks": reader.landmarks is not None,
        "resize": reader.resize,
    }
    done = np.zeros(len(images), bool)
    chunks: list[Path] = []
    if (part / MANIFEST).exists():
        old = read_json(part / MANIFEST)
        diff = [k for k in manifest if old.get(k) != manifest[k] and k != "model"]
        if diff:
            raise ValueError(
                f"{out} holds an unfinished run with different {', '.join(diff)}; pass "
                "--overwrite to start over, or use another --out"
            )
        chunks = sorted(part.glob("chunk-*.npz"))
        for c in chunks:
            with np.load(c, allow_pickle=False) as z:
                done[z["index"]] = True
                done[z["skipped_index"]] = True
    else:
        part.mkdir(parents=True, exist_ok=True)
        write_text_atomic(part / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    todo = [int(i) for i in np.nonzero(~done)[0]]
    bar = Progress(len(images), "embed", initial=int(done.sum()), enabled=progress)

    buf_idx: list[int] = []
    buf_emb: list[np.ndarray] = []
    buf_bad: list[tuple[int, str]] = []
    batch: list[tuple[int, np.ndarray]] = []
    last_flush = time.monotonic()

    def run_batch():
        if batch:
            buf_emb.append(embed_batch(model, [c for _, c in batch], batch_size))
            buf_idx.extend(i for i, _ in batch)
            bar.update(len(batch))
            batch.clear()

    def write_chunk():
        nonlocal last_flush
        if not buf_idx and not buf_bad:
            return
        first = min(buf_idx + [i for i, _ in buf_bad])
        emb = np.concatenate(buf_emb) if buf_emb else np.zeros((0, model.embedding_dim))
        with atomic_output(part / f"chunk-{first:010d}.npz", "wb") as f:
            np.savez(
                f,
                index=np.asarray(buf_idx, np.int64),
                embeddings=emb.astype(np.float32),
                skipped_index=np.asarray([i for i, _ in buf_bad], np.int64),
                skipped_error=np.asarray([e for _, e in buf_bad], dtype=str),
            )
        buf_idx.clear()
        buf_emb.clear()
        buf_bad.clear()
        last_flush = time.monotonic()

    for i, crop, err in iter_faces(images, reader, todo, skip_bad=skip_bad):
        if crop is None:
            buf_bad.append((i, err))
            bar.update(1)
        else:
            batch.append((i, crop))
            if len(batch) == batch_size:
                run_batch()
        if len(buf_idx) + len(buf_bad) >= chunk_size or time.monotonic() - last_flush > 60:
            run_batch()
            write_chunk()
    run_batch()
    write_chunk()
    bar.close()
    return _finish(out, part, images, model, manifest)


def _finish(
    out: Path, part: Path, images: ImageSet, model: EmbeddingModel, manifest: dict
) -> EmbeddingSet:
    from hfrjax.fileio import atomic_output, write_text_atomic

    n = len(images)
    emb = np.zeros((n, model.embedding_dim), np.float32)
    have = np.zeros(n, bool)
    errors: dict[int, str] = {}
    for c in sorted(part.glob("chunk-*.npz")):
        with np.load(c, allow_pickle=False) as z:
            emb[z["index"]] = z["embeddings"]
            have[z["index"]] = True
            errors.update(zip(z["skipped_index"].tolist(), z["skipped_error"].tolist()))
    missing = np.nonzero(~have & ~np.isin(np.arange(n), list(errors)))[0]
    if missing.size:
        raise RuntimeError(f"{len(missing)} images were not embedded, e.g. index {missing[0]}")
    keep = np.nonzero(have)[0]
    refs = [images.refs[i] for i in keep]
    meta = {
        "keys": [r.key for r in refs],
        "identities": [r.identity for r in refs],
        **{k: manifest[k] for k in ("model", "model_kind", "model_fingerprint", "source")},
        "embedding_dim": model.embedding_dim,
        "normalized": True,
        "skipped": [{"key": images.refs[i].key, "error": e} for i, e in sorted(errors.items())],
    }
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(out / EMBEDDINGS, "wb") as f:
        np.save(f, emb[keep])
    write_text_atomic(out / KEYS, json.dumps(meta, indent=1) + "\n")
    shutil.rmtree(part, ignore_errors=True)
    return EmbeddingSet(emb[keep], meta["keys"], meta["identities"], meta)
