"""Training data: built dataset + feature cache -> instruction samples -> length-grouped, collated batches.

>>> cache = FeatureCache.from_config(cfg, dataset_dir)
>>> ds = EmotionDataset(dataset_dir, processor, cache, model.config.modalities, split="train")
>>> sampler = LengthGroupedBatchSampler(ds.lengths, batch_size=4, seed=cfg.run.seed, rank=r, num_replicas=w)
>>> loader = DataLoader(ds, batch_sampler=sampler, collate_fn=EmotionCollator(processor, model.config.modalities))
>>> model(**{k: v for k, v in batch.items() if k != "ids"})
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from emollm.dataset.io import parse_jsonl
from emollm.errors import EmollmError, FeatureCacheError
from emollm.features.cache import FeatureCache
from emollm.log import get_logger

log = get_logger(__name__)


class EmotionDataset(torch.utils.data.Dataset):
    """Instruction samples of a built dataset, with their cached features and AU sequences.

    Args:
        dataset_dir: a built dataset (``annotations.jsonl``, ``aus/``), or an ``emollm export --to hf``
            folder of one (its records; AU side files from the dataset dir it was exported from).
        processor: the model's :class:`~emollm.processing.EmoProcessor`.
        cache: the :class:`FeatureCache` (bound here to ``modalities``' encoders); None when the model
            has no frozen modality.
        modalities: ``EmoLLMConfig.modalities`` (or ``modality_specs(cfg.model)``).
        split: records of this split only (None: all).
        tasks: the tasks turned into samples per record (``emotion``: label, else pseudo-label;
            ``reason``: the record's ``reasoning``). Records without a target are skipped and counted.
        instructions: instruction JSONL files (id, task, messages, target, label; optional
            ``clip_id``) used instead of ``tasks``; media come from the clip record with that id.
        check: verify every cached entry's shape against ``modalities`` now (before any batch).
        prompt_only: samples without their answer, for generation (``emollm predict``, evaluation
            during training): every record of the split becomes a sample, with or without a target.
        instruction: ask every sample with this entry of the task's pool (``predict.instruction``)
            instead of one drawn per record id and seed (training's variety): a prediction's prompt
            never depends on a clip's name.

    An item is ``processor.encode(...)`` plus ``task``, ``media`` ({name: (T, D) float32}) and ``media_masks``
    ({au name: (T,) bool}). ``skipped`` counts records left out and why.
    """

    def __init__(self, dataset_dir: str | os.PathLike, processor: Any, cache: FeatureCache | None,
                 modalities: Mapping[str, Mapping[str, Any]], *, split: str | None = None,
                 tasks: Sequence[str] = ("emotion",), instructions: Sequence[str | os.PathLike] | None = None,
                 seed: int = 0, check: bool = True, prompt_only: bool = False, instruction: int | None = None):
        from emollm.dataset.record import read_dataset

        self.root = Path(dataset_dir)
        self.processor = processor
        self.cache = cache
        self.modalities = {name: dict(spec) for name, spec in modalities.items()}
        self.frozen = [n for n, s in self.modalities.items() if s["kind"] != "au"]
        self.au_names = [n for n, s in self.modalities.items() if s["kind"] == "au"]
        if self.frozen:
            if cache is None:
                raise FeatureCacheError(f"modalities {self.frozen} read cached features, but no feature cache was given")
            cache.bind_specs(self.modalities)
        if (self.root / "dataset_dict.json").is_file():  # an `emollm export --to hf` folder: its records, as built;
            from emollm.dataset.hf import read_hf_export  # AU side files stay in the dataset dir it came from

            self.root, records = read_hf_export(self.root)
        else:
            records = read_dataset(self.root)
        self.records = {r["id"]: r for r in records}
        self.skipped: Counter[str] = Counter()
        self.prompt_only = prompt_only
        self.instruction = instruction
        self.samples = (self._from_instructions(instructions, split) if instructions
                        else self._from_records(tasks, split, seed))  # fmt: skip
        if self.skipped:
            log.warning("training data: %d sample(s) skipped: %s", sum(self.skipped.values()), dict(self.skipped))
        self._present = [self._presence(s) for s in self.samples]
        self._lengths: list[int] | None = None
        if check:
            self.check_feature_dims()

    # -- samples ---------------------------------------------------------------------------
    def _from_records(self, tasks: Sequence[str], split: str | None, seed: int) -> list[dict[str, Any]]:
        from emollm.prompts import configured_instruction, emotion_llama_sample

        pools = {t: [configured_instruction(t, self.instruction)] for t in tasks} if self.instruction is not None else {}
        out = []
        for record in self.records.values():
            if split is not None and record.get("split") != split:
                continue
            for task in tasks:
                if task == "emotion":
                    target = record.get("label") or record.get("pseudo_label")
                elif task == "reason":
                    target = record.get("reasoning")
                else:
                    raise EmollmError(f"task '{task}' has no recipe from clip records (known: emotion, reason)",
                                      hint="give instruction JSONL files for other tasks")
                if self.prompt_only:
                    target = None
                elif not target:
                    self.skipped[f"{task}: no target"] += 1
                    continue
                sample = emotion_llama_sample(record["id"], task, record.get("subtitle"), target=target,
                                              label=record.get("label") or record.get("pseudo_label"),
                                              modalities=tuple(self.processor.placeholders), seed=seed,
                                              pool=pools.get(task))
                sample["clip_id"] = record["id"]
                out.append(sample)
        return out

    def _from_instructions(self, files: Sequence[str | os.PathLike], split: str | None) -> list[dict[str, Any]]:
        out = []
        for file in files:
            with open(file, encoding="utf-8") as fh:
                for n, sample in parse_jsonl(fh, where=file, error=EmollmError, numbered=True):
                    missing = [k for k in ("id", "messages", "target") if k not in sample]
                    if self.prompt_only:
                        missing = [k for k in missing if k != "target"]
                        sample.pop("target", None)
                    if missing:
                        raise EmollmError(f"{file}:{n}: instruction sample lacks {missing}")
                    clip_id = sample.setdefault("clip_id", sample["id"])
                    record = self.records.get(clip_id)
                    if record is None:
                        self.skipped["instruction: clip not in annotations"] += 1
                        continue
                    if split is not None and record.get("split") != split:
                        continue
                    out.append(sample)
        return out

    def _presence(self, sample: dict[str, Any]) -> set[str]:
        """Modalities with features for this sample: cache entries, AU side files with face frames."""
        clip_id = sample["clip_id"]
        present = set()
        for name in self.frozen:
            status = self.cache.status(clip_id, name)  # type: ignore[union-attr]
            if status == "present":
                present.add(name)
            elif status == "missing":
                if self.cache.on_missing == "error":  # type: ignore[union-attr]
                    raise self.cache._missing(clip_id, name)  # type: ignore[union-attr]
                self.skipped[f"{name}: not cached (trained without it)"] += 1
        if self.au_names and self._au(clip_id) is not None:
            present.update(self.au_names)
        return present

    def _au(self, clip_id: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        from data_builders.au import load_aus

        aus_file = self.records[clip_id].get("aus_file")
        if not aus_file:
            return None
        try:
            features, mask = load_aus(self.root / aus_file).model_input()
        except (OSError, ValueError, KeyError) as err:
            raise EmollmError(f"clip '{clip_id}': cannot read its AU side file {aus_file} ({err})") from None
        if not mask.any():
            return None
        return torch.from_numpy(features), torch.from_numpy(mask)

    # -- checks ----------------------------------------------------------------------------
    def check_feature_dims(self) -> None:
        """Every cached entry's shape against the model's ``(num_input_tokens, feature_dim)`` (file
        headers only); raises FeatureCacheError naming the first clip and modality that mismatch."""
        for sample, present in zip(self.samples, self._present, strict=True):
            clip_id = sample["clip_id"]
            for name in self.frozen:
                if name not in present:
                    continue
                spec = self.modalities[name]
                expected = (spec.get("num_input_tokens"), spec["feature_dim"])
                shape = self.cache.shape(clip_id, name)  # type: ignore[union-attr]
                if shape != expected:
                    raise FeatureCacheError(
                        f"clip '{clip_id}', modality '{name}': cached features have shape {shape}, the model "
                        f"expects (num_input_tokens, feature_dim) = {expected}",
                        hint="the cache was made with other encoder options, or the config's feature_dim / "
                             "num_input_tokens disagree: fix the config or rerun `emollm features`",
                    )
        for name in self.au_names:
            width = self.modalities[name]["feature_dim"]
            for sample, present in zip(self.samples, self._present, strict=True):
                if name in present:
                    au = self._au(sample["clip_id"])
                    if au is not None and au[0].shape[1] != width:
                        raise FeatureCacheError(f"clip '{sample['clip_id']}', modality '{name}': AU width "
                                                f"{au[0].shape[1]}, the model expects {width}")
                    break

    # -- access ----------------------------------------------------------------------------
    def length(self, index: int) -> int:
        """Token length of one sample (encoded now; :attr:`lengths` caches all of them)."""
        if self._lengths is not None:
            return self._lengths[index]
        return len(self.processor.encode(self.samples[index], present=self._present[index])["input_ids"])

    @property
    def lengths(self) -> list[int]:
        """Token length of every sample (for the length-grouped sampler); encoded once."""
        if self._lengths is None:
            self._lengths = [len(self.processor.encode(s, present=p)["input_ids"])
                             for s, p in zip(self.samples, self._present, strict=True)]  # fmt: skip
        return self._lengths

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample, present = self.samples[index], set(self._present[index])
        clip_id = sample["clip_id"]
        media: dict[str, torch.Tensor] = {}
        masks: dict[str, torch.Tensor] = {}
        for name in self.frozen:
            if name in present:
                features = self.cache.get(clip_id, name)  # type: ignore[union-attr]
                if features is None:
                    present.discard(name)
                else:
                    media[name] = features
        for name in self.au_names:
            if name in present:
                au = self._au(clip_id)
                if au is None:
                    present.discard(name)
                else:
                    media[name], masks[name] = au
        encoded = self.processor.encode(sample, present=present)
        if encoded is None:
            return None  # type: ignore[return-value]  # too long under truncation="drop": the collator skips it
        return {**encoded, "task": sample.get("task"), "media": media, "media_masks": masks}


class EmotionCollator:
    """``processor.collate`` + media: ``media[name]`` ``(B, T, D)`` (zeros where absent, which
    ``media_present`` marks False), AU sequences padded to the batch's longest with
    ``media_masks[name]`` ``(B, T)`` True on real face frames."""

    def __init__(self, processor: Any, modalities: Mapping[str, Mapping[str, Any]], *,
                 pad_to_multiple_of: int | None = None, padding_side: str = "right"):
        self.processor = processor
        self.modalities = {name: dict(spec) for name, spec in modalities.items()}
        self.pad_to_multiple_of = pad_to_multiple_of
        self.padding_side = padding_side  # "left" for batched generation

    def __call__(self, items: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        rows = [item for item in items if item is not None]
        batch = self.processor.collate(rows, pad_to_multiple_of=self.pad_to_multiple_of, padding_side=self.padding_side)
        media: dict[str, torch.Tensor] = {}
        masks: dict[str, torch.Tensor] = {}
        size = len(rows)
        for name, spec in self.modalities.items():
            got = [row["media"].get(name) for row in rows]
            if spec["kind"] == "au":
                frames = max([g.shape[0] for g in got if g is not None], default=1)
                values = torch.zeros(size, frames, spec["feature_dim"])
                mask = torch.zeros(size, frames, dtype=torch.bool)
                for i, (g, row) in enumerate(zip(got, rows, strict=True)):
                    if g is not None:
                        values[i, : g.shape[0]] = g
                        mask[i, : g.shape[0]] = row["media_masks"][name]
                media[name], masks[name] = values, mask
                continue
            shape = next((g.shape for g in got if g is not None), (spec["num_input_tokens"], spec["feature_dim"]))
            values = torch.zeros(size, *shape)
            for i, g in enumerate(got):
                if g is not None:
                    if g.shape != shape:
                        raise FeatureCacheError(f"clip '{rows[i]['id']}', modality '{name}': features {tuple(g.shape)}"
                                                f" differ from the batch's {tuple(shape)}")
                    values[i] = g
            media[name] = values
        batch["media"] = media
        batch["media_masks"] = masks
        return batch


class LengthGroupedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of similar length: a seeded permutation per epoch is cut into mega-batches of
    ``batch_size * num_replicas * mega_batch_mult`` samples, each sorted by length and cut into
    global batches, whose order is shuffled (the longest batch first, so memory peaks at step 1).
    Rank ``r`` takes the r-th contiguous slice of each global batch; every rank gets the same
    number of batches (indices wrap around when the count does not divide). Call :meth:`set_epoch`.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, seed: int = 0, mega_batch_mult: int = 50,
                 num_replicas: int = 1, rank: int = 0, drop_last: bool = False, shuffle: bool = True):
        if batch_size < 1 or num_replicas < 1 or not 0 <= rank < num_replicas or mega_batch_mult < 1:
            raise EmollmError(f"bad sampler settings: batch_size={batch_size}, rank={rank}/{num_replicas}, "
                              f"mega_batch_mult={mega_batch_mult}")
        if not lengths:
            raise EmollmError("no training sample: the dataset is empty")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega = mega_batch_mult
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> list[list[int]]:
        n = len(self.lengths)
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n))
        step = self.batch_size * self.num_replicas
        if self.drop_last:
            order = order[: n - n % step]
        elif n % step:
            order += order[: step - n % step] if n >= step - n % step else (order * step)[: step - n % step]
        mega = step * self.mega
        batches = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            batches += [chunk[k : k + step] for k in range(0, len(chunk), step)]
        if self.shuffle and len(batches) > 1:
            perm = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[i] for i in perm]
            longest = max(range(len(batches)), key=lambda b: self.lengths[batches[b][0]])
            batches[0], batches[longest] = batches[longest], batches[0]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._global_batches():
            yield batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def __len__(self) -> int:
        n, step = len(self.lengths), self.batch_size * self.num_replicas
        return n // step if self.drop_last else -(-n // step)

    def real_token_fraction(self) -> float:
        """Real tokens / padded tokens over this rank's batches of the current epoch."""
        return real_token_fraction(self.lengths, list(self))


def real_token_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of real (non-padding) tokens when each batch is padded to its longest sample."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    return real / padded if padded else 1.0


__all__ = ["EmotionCollator", "EmotionDataset", "LengthGroupedBatchSampler", "real_token_fraction"]
