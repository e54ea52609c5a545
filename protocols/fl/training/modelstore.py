"""Model files in the data dir: `<datadir>/fl/<session-id>/`.

- `latest.npy` (overwritten after every completed round) and, at the session's end,
  `final-<hash16>.npy`: the flat float32 parameters, written with `numpy.save(...,
  allow_pickle=False)` and read back with `allow_pickle=False` (no pickle either way);
- `model.json`: task, layout (name, shape, dtype per tensor), hash of each saved file.

`export_state_dict` writes a torch state dict file for the user (`torch.save` of plain
tensors; the daemon runs it in its task process, process.py); fognode itself never loads
such files.
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from fognode.protocols.fl.tasks import ParamLayout, Task
from fognode.protocols.fl.transfer.tensors import params_hash


def session_dir(root: Path, sid: bytes) -> Path:
    d = root / sid.hex()
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


def save_model(root: Path, sid: bytes, task: str, layout: ParamLayout, params: np.ndarray,
               model_hash: bytes, *, final: bool) -> Path:
    """Write the model atomically (temp file + rename); returns its path. OSError on I/O."""
    d = session_dir(root, sid)
    name = f"final-{model_hash.hex()[:16]}.npy" if final else "latest.npy"
    path = d / name
    tmp = d / (name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(params, dtype="<f4"), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    meta_path = d / "model.json"
    meta: dict[str, Any] = {}
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            meta = {}
    meta.update({"task": task, "layout": layout.to_wire()})
    meta.setdefault("files", {})[name] = model_hash.hex()
    if final:
        meta["final"] = {"file": name, "hash": model_hash.hex()}
    tmp_meta = d / f"model.json.{name}.tmp"
    tmp_meta.write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.replace(tmp_meta, meta_path)
    return path


def load_model(path: Path, expected_hash: bytes | None = None) -> np.ndarray:
    """Read a saved model (ValueError if it is not a 1-D float32 array or the hash differs)."""
    arr = np.load(path, allow_pickle=False)
    if arr.dtype != np.dtype("<f4") or arr.ndim != 1:
        raise ValueError(f"{path} is not a flat float32 model")
    if expected_hash is not None and params_hash(arr) != expected_hash:
        raise ValueError(f"{path} does not hash to {expected_hash.hex()}")
    return arr


def export_state_dict(task: Task, params: np.ndarray, path: Path) -> None:
    """Write `params` as a torch state dict file (`torch.save`) at `path` (imports torch)."""
    import torch

    if not path.parent.is_dir():   # torch.save would raise a RuntimeError for it
        raise FileNotFoundError(errno.ENOENT, f"no directory {path.parent}")
    tmp = path.with_name(path.name + ".tmp")
    torch.save(task.state_dict(params), tmp)
    os.replace(tmp, path)
