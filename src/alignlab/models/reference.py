"""The frozen reference policy of DPO and KL-regularised RL, in three memory/compute trade-offs.

- `FrozenCopy`: a second, frozen model (simple; costs a full copy of the weights).
- `AdapterDisabled`: a LoRA policy with its adapters switched off (no second copy at all).
- `LogpsCache`: reference log-probs computed once per dataset and kept on disk (offline methods
  such as DPO then need no reference model while training).

All give log-probs in the layout of `alignlab.ops.logps.token_logps`: `[B, T-1]` per-token values
and the matching mask.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers.utils import cached_file

from alignlab.models.load import checkpoint_source, load_causal_lm
from alignlab.models.lora import is_lora, merged_for_saving
from alignlab.ops.logps import token_logps


@runtime_checkable
class Reference(Protocol):
    """Anything that gives frozen reference log-probs, without building a graph."""

    def token_logps(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        loss_mask: Tensor | None = None,
        temperature: float = 1.0,
        *,
        position_ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]: ...


class FrozenCopy:
    """A separate frozen model: eval mode, no gradients, unaffected by policy updates.

    Built from a live policy (a deep copy, LoRA adapters merged in) or loaded from a path.
    """

    def __init__(self, model: nn.Module):
        frozen = merged_for_saving(model) if is_lora(model) else copy.deepcopy(model)
        frozen.eval()
        frozen.requires_grad_(False)
        self.model = frozen

    @classmethod
    def from_pretrained(
        cls, path: str | Path, dtype: str = "float32", device: str | torch.device | None = None
    ) -> "FrozenCopy":
        """Load the reference straight from a checkpoint (no copy of the policy in between)."""
        self = cls.__new__(cls)
        model = load_causal_lm(path, dtype=dtype, device=device)
        model.eval()
        model.requires_grad_(False)
        self.model = model
        return self

    @torch.no_grad()
    def token_logps(self, input_ids, attention_mask, loss_mask=None, temperature=1.0, *, position_ids=None):
        return token_logps(
            self.model, input_ids, attention_mask, loss_mask, temperature, position_ids=position_ids
        )


class AdapterDisabled:
    """The LoRA policy itself with its adapters switched off: the base model, at no memory cost.

    Each call runs in eval mode (so dropout cannot make the reference noisy) and restores the
    policy's train/eval mode afterwards.
    """

    def __init__(self, peft_model: nn.Module):
        if not is_lora(peft_model):
            raise TypeError("AdapterDisabled needs a LoRA (peft) model; use FrozenCopy for a full model")
        self.model = peft_model

    @torch.no_grad()
    def token_logps(self, input_ids, attention_mask, loss_mask=None, temperature=1.0, *, position_ids=None):
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter():
                return token_logps(
                    self.model, input_ids, attention_mask, loss_mask, temperature, position_ids=position_ids
                )
        finally:
            self.model.train(was_training)


# ---------------------------------------------------------------------------------------------
# Fingerprints and the on-disk cache


def _jsonable(obj: Any) -> Any:
    """Canonical JSON stand-ins for the non-JSON values a cache key may hold."""
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.dtype):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=lambda item: json.dumps(item, sort_keys=True, default=_jsonable))
    if hasattr(obj, "model_dump"):  # pydantic models
        return obj.model_dump(mode="json")
    # Refuse rather than fall back to repr(): a repr may hold a memory address, which would make
    # the key differ on every run (or, worse, coincide for different objects).
    raise TypeError(f"cannot fingerprint a {type(obj).__name__}; use plain JSON values, paths or dataclasses")


def canonical_json(obj: Any) -> str:
    """The one JSON text of `obj`: sorted keys, no whitespace, NaN refused."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_jsonable, allow_nan=False)


def fingerprint(obj: Any) -> str:
    """sha256 (hex) of the canonical JSON of `obj`."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


LARGE_FILE_BYTES = 64 << 20
SAMPLE_BYTES = 1 << 20


def _hash_weight_file(path: Path, digest: "hashlib._Hash") -> None:
    stat = path.stat()
    digest.update(f"{path.name}\0{stat.st_size}\0".encode())
    with path.open("rb") as handle:
        if stat.st_size <= LARGE_FILE_BYTES:
            for block in iter(lambda: handle.read(SAMPLE_BYTES), b""):
                digest.update(block)
            return
        # Large file: size, modification time and the first and last MiB (the safetensors header
        # with every tensor's name, shape and offset sits at the start). The mtime makes a file
        # rewritten in place miss the cache even when the sampled bytes agree; a copied model
        # directory therefore misses too, which costs a recomputation, never a wrong hit.
        digest.update(f"{stat.st_mtime_ns}\0".encode())
        digest.update(handle.read(SAMPLE_BYTES))
        handle.seek(stat.st_size - SAMPLE_BYTES)
        digest.update(handle.read(SAMPLE_BYTES))


def _local_model_dir(model_or_path: str | Path) -> Path:
    """The directory holding the model: the path itself, or a hub model's local cache snapshot."""
    source = Path(checkpoint_source(model_or_path))
    if source.is_dir():
        return source
    try:  # a hub id: the copy transformers downloaded (or downloads now) when the model was loaded
        config_file = cached_file(str(model_or_path), "config.json")
    except OSError as err:
        raise FileNotFoundError(f"cannot fingerprint {str(model_or_path)!r}: {err}") from err
    return Path(config_file).parent


def model_fingerprint(model_or_path: nn.Module | str | Path) -> str:
    """A sha256 that changes when the model's weights or config change.

    For a saved model directory (or a hub id, via its local cache): config.json plus every weight
    file's name, size and content. Files up to 64 MiB are hashed in full (milliseconds for small
    models); larger ones by size, modification time and their first and last MiB, so a 7B
    checkpoint costs a few small reads rather than reading and hashing ~15 GB (tens of seconds).
    For an in-memory model: its config and every parameter and buffer (names, dtypes, shapes,
    bytes). This copies each tensor to the CPU and hashes all of it, roughly a second per GB, so
    prefer the path form for large models.
    """
    digest = hashlib.sha256()
    if isinstance(model_or_path, nn.Module):
        model = model_or_path
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            settings = config.to_dict()
            settings.pop("_name_or_path", None)  # where it was loaded from is not what it computes
            digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
        for name, tensor in sorted(model.state_dict().items()):
            tensor = tensor.detach()
            digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
            raw = tensor.to("cpu").contiguous().reshape(-1).view(torch.uint8)
            digest.update(raw.numpy())
        return digest.hexdigest()

    path = _local_model_dir(model_or_path)
    config_file = path / "config.json"
    digest.update(config_file.read_bytes())
    weights = sorted(list(path.glob("*.safetensors")) + list(path.glob("pytorch_model*.bin")))
    if not weights:
        raise FileNotFoundError(f"cannot fingerprint {str(model_or_path)!r}: no weight files there")
    for weight_file in weights:
        _hash_weight_file(weight_file, digest)
    return digest.hexdigest()


_KEY_METADATA = "alignlab_cache_key"


class LogpsCache:
    """Reference log-probs computed once and kept on disk, keyed by what they depend on.

    `key` should name everything that changes the numbers: the reference model (use
    `model_fingerprint`), the data (e.g. a fingerprint of the file and the tokenizer), and the
    settings (max length, truncation, temperature, ...). The file is
    `<cache_dir>/<fingerprint(key)>.safetensors` and also holds the key itself, checked on load.
    """

    def __init__(self, cache_dir: str | Path, key: dict):
        self.cache_dir = Path(cache_dir)
        self.key_json = canonical_json(key)
        self.digest = fingerprint(key)
        self.path = self.cache_dir / f"{self.digest}.safetensors"

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self) -> dict[str, Tensor]:
        if not self.exists():
            raise FileNotFoundError(f"no cached reference log-probs at {self.path}")
        with safe_open(str(self.path), framework="pt") as handle:
            stored_key = (handle.metadata() or {}).get(_KEY_METADATA)
        if stored_key != self.key_json:
            raise ValueError(f"{self.path} was written for a different key; delete it to recompute")
        return load_file(str(self.path))

    def save(self, tensors: dict[str, Tensor]) -> Path:
        """Write atomically: to a temporary file in the same directory, then `os.replace`, so a
        kill never leaves a truncated cache that a later run would trust."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # clone(): safetensors refuses tensors that share memory (e.g. two views of one buffer).
        cpu = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in tensors.items()}
        handle, temp_name = tempfile.mkstemp(dir=self.cache_dir, prefix=f".{self.digest[:16]}.", suffix=".tmp")
        os.close(handle)
        os.chmod(temp_name, 0o644)  # mkstemp makes it private; the cache is an ordinary file
        try:
            save_file(cpu, temp_name, metadata={_KEY_METADATA: self.key_json})
            with open(temp_name, "rb") as written:
                os.fsync(written.fileno())
            os.replace(temp_name, self.path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        return self.path
