"""Chat prompts -> token batches for the spectral LM (training and inference share this code)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import SpecllmError
from .qa import FLUX_CLOSE, FLUX_OPEN, FLUX_SPAN
from .spectral import Batch

SYSTEM = "You are an astronomer's assistant. You read stellar spectra and answer with their labels."


@dataclass
class Encoded:
    before: list[int]  # prompt tokens up to and including <flux>
    after: list[int]  # prompt tokens from </flux> to the start of the assistant turn
    answer: list[int]  # answer tokens + end of turn (empty at inference)


class PromptBuilder:
    def __init__(self, tokenizer, patch_count: int | None, prompt: dict | None = None):
        """`prompt`: a question's token ids recorded in training (`ModelSpec.prompt`); with it the tokenizer may be
        None, and the builder then serves that question alone (the numeric read-out at inference)."""
        self.tokenizer = tokenizer
        self.patch_count = patch_count  # None for the text formats
        self._cache: dict[str, tuple[list[int], list[int]]] = {}
        if prompt is not None:
            self._cache[prompt["question"]] = (list(prompt["before"]), list(prompt["after"]))
        if tokenizer is None:
            self.pad_id, self.eos_text = prompt["pad_id"], ""
        else:
            self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            self.eos_text = tokenizer.eos_token or ""

    def _need_tokenizer(self) -> None:
        if self.tokenizer is None:
            raise SpecllmError(
                "this model was loaded for its recorded question only (no tokenizer): load it with its tokenizer"
            )

    def prompt_text(self, question: str) -> str:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _ids(self, text: str) -> list[int]:
        self._need_tokenizer()
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, question: str) -> tuple[list[int], list[int]]:
        """Token ids of the prompt, split around the flux span in patch mode (cached: questions repeat)."""
        hit = self._cache.get(question)
        if hit is None:
            self._need_tokenizer()
            text = self.prompt_text(question)
            if self.patch_count is not None:
                if FLUX_SPAN not in text:
                    raise SpecllmError(f"a patch-format question must contain {FLUX_SPAN!r}")
                head, tail = text.split(FLUX_SPAN, 1)
                hit = (self._ids(head + FLUX_OPEN), self._ids(FLUX_CLOSE + tail))
            else:
                hit = (self._ids(text), [])
            if len(self._cache) < 4096:
                self._cache[question] = hit
        return hit

    def encode(self, question: str, answer: str | None) -> Encoded:
        before, after = self.prompt_ids(question)
        return Encoded(before, after, self._ids(answer + self.eos_text) if answer is not None else [])

    def length(self, enc: Encoded) -> int:
        return len(enc.before) + (self.patch_count or 0) + len(enc.after) + len(enc.answer)

    def collate(
        self,
        encoded: list[Encoded],
        flux: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        values: np.ndarray | None = None,
        classes: np.ndarray | None = None,
        device: str | torch.device = "cpu",
        weights: np.ndarray | None = None,
    ) -> Batch:
        """A padded batch: right-padded when it holds answers (training), else left-padded (generation continues
        every row from its end). Targets sit at the positions that predict each answer token. `prefix_len` counts
        the leading prompt tokens that every row shares at the same positions (run once by the model)."""
        P = self.patch_count or 0
        lengths = [self.length(e) for e in encoded]
        L = max(lengths)
        B = len(encoded)
        right = any(e.answer for e in encoded)
        ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, L), dtype=torch.long)
        slots = torch.zeros((B, L), dtype=torch.bool) if P else None
        targets = torch.full((B, L), -100, dtype=torch.long)
        readout = torch.zeros(B, dtype=torch.long)
        prefix = _common_prefix([e.before for e in encoded]) if right or len(set(lengths)) == 1 else 0
        for i, (e, n) in enumerate(zip(encoded, lengths)):
            start = 0 if right else L - n
            seq = e.before + [self.pad_id] * P + e.after + e.answer
            ids[i, start : start + n] = torch.tensor(seq, dtype=torch.long)
            attn[i, start : start + n] = 1
            if P:
                s = start + len(e.before)
                slots[i, s : s + P] = True
            prompt_end = start + n - len(e.answer)  # index of the first answer token
            readout[i] = prompt_end - 1
            if e.answer:
                targets[i, prompt_end - 1 : start + n - 1] = torch.tensor(e.answer, dtype=torch.long)
        return Batch(
            input_ids=ids.to(device),
            attention_mask=attn.to(device),
            patch_slots=slots.to(device) if slots is not None else None,
            # read-only arrays (views of Parquet buffers) are copied: torch warns on a tensor over one
            flux=torch.as_tensor(np.require(flux, np.float32, ["W"]), device=device) if P else None,
            mask=torch.as_tensor(np.require(mask, np.bool_, ["W"]), device=device) if P else None,
            readout_index=readout.to(device),
            prefix_len=prefix,
            target_ids=targets.to(device) if right else None,
            values=torch.as_tensor(values, dtype=torch.float32, device=device) if values is not None else None,
            classes=torch.as_tensor(classes, dtype=torch.long, device=device) if classes is not None else None,
            weights=torch.as_tensor(weights, dtype=torch.float32, device=device) if weights is not None else None,
        )


def _common_prefix(rows: list[list[int]]) -> int:
    """Length of the longest token prefix that all `rows` share."""
    first, n = rows[0], min(len(r) for r in rows)
    for row in rows[1:]:
        k = 0
        while k < n and row[k] == first[k]:
            k += 1
        n = k
    return n
