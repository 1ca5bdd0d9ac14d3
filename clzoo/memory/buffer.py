"""ReplayBuffer: exemplars stored as the dataset gives them (uint8 for images), preallocated at capacity.

All of its state is registered as buffers, so it is in the owner's ``state_dict`` (checkpointed, resumed and
counted by the ledger). Insertion is vectorised: no Python loop over the batch for reservoir sampling.

The stored samples, labels and logits live on the owner's device (``.to(device)``, as the training data); the two
counters (samples seen, slots filled) stay on the host whatever the device, because they steer Python control flow
on every step (how many slots to draw from, whether the buffer is still filling): reading them costs no
host-device synchronisation on an accelerator.

Reservoir decisions are made on the host by default, on every device: the draws come from the CPU's generator, a
short Python pass places the batch, and on an accelerator the chosen slots reach the device in one non-blocking
copy, so nothing is read back from it. The device pass (``_decide_on_host = False``: draws on the device, decided
by tensor operations) reads nothing either but costs about 45 tensor operations a batch against about 14, six of
them kernels; on a GPU, where each operation costs the host a dispatch and most a launch, that was most of
clzoo's per-step overhead (bench/README.md, "On a GPU").
"""
from __future__ import annotations

import math
from array import array
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

SELECTIONS = ("reservoir", "class_balanced", "herding")


def label_dtype(n_classes: int) -> torch.dtype:
    """The smallest signed integer dtype that holds every label (labels are stored, so they are paid for)."""
    return torch.int16 if n_classes < 2**15 else torch.int32


def reservoir_draws(uniform: list[float], seen: int) -> list[int]:
    """Algorithm R's draws for stream positions ``seen + 1, seen + 2, ...``: ``floor(u * position)`` computed as the
    float32 tensor product ``(torch.rand(b) * torch.arange(seen + 1, seen + b + 1)).long()`` computes it, from the
    ``torch.rand`` values read to the host. The position and the product are rounded to float32 as the tensor op
    rounds them (``array('f')``; the product of two float32 values is exact in a Python float, so it is rounded
    once, like the float32 multiplication), then truncated like ``.long()``: the same integers, bit for bit."""
    positions = array("f", range(seen + 1, seen + len(uniform) + 1))
    return [int(p) for p in array("f", [u * q for u, q in zip(uniform, positions)])]


@dataclass
class ReplayBatch:
    """A batch drawn from the buffer: raw inputs (stored dtype), int64 labels, task ids, optional logits."""

    x: Tensor
    y: Tensor
    stored_task: Tensor
    logits: Tensor | None
    index: Tensor

    @property
    def task(self) -> Tensor:
        """The samples' task ids as int64, converted when read (most replay methods never read them)."""
        return self.stored_task.long()


class ReplayBuffer(nn.Module):
    """A fixed-capacity exemplar memory.

    ``selection``: ``reservoir`` (Vitter's algorithm R: every sample of the stream is kept with equal
    probability), ``class_balanced`` (greedy: a new sample evicts one of the largest class, as GDumb), or
    ``herding`` (filled by the owner at task end with :meth:`set_contents`, as iCaRL).
    """

    memory_categories = {"x": "exemplars", "y": "exemplar_extras", "task": "exemplar_extras",
                         "logits": "exemplar_extras", "n_seen": "exemplar_extras", "n_filled": "exemplar_extras"}

    def __init__(self, capacity: int, sample_shape: Sequence[int], n_classes: int, store_logits: bool = False,
                 x_dtype: torch.dtype = torch.uint8, selection: str = "reservoir"):
        super().__init__()
        if selection not in SELECTIONS:
            raise ValueError(f"unknown buffer selection '{selection}'; choose one of {', '.join(SELECTIONS)}")
        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        self.capacity, self.selection, self.n_classes = int(capacity), selection, int(n_classes)
        self.register_buffer("x", torch.zeros((self.capacity, *sample_shape), dtype=x_dtype))
        self.register_buffer("y", torch.zeros(self.capacity, dtype=label_dtype(n_classes)))
        self.register_buffer("task", torch.zeros(self.capacity, dtype=torch.int16))
        self.register_buffer("logits", torch.zeros(self.capacity, n_classes) if store_logits else None)
        self.register_buffer("n_seen", torch.zeros((), dtype=torch.int64))
        self.register_buffer("n_filled", torch.zeros((), dtype=torch.int64))

    #: reservoir decisions on the host (True, the default) or on the device (False); on a CPU both give the same
    #: result (the same draws); on an accelerator the device pass draws from the device's generator
    _decide_on_host: bool = True

    #: the counters kept on the host by :meth:`_apply` (see the module docstring)
    HOST_COUNTERS = ("n_seen", "n_filled")

    def _apply(self, fn, recurse=True):
        # .to(device) / .cuda() move the samples; the (integer) counters stay where they are, on the host
        counters = {name: self._buffers.get(name) for name in self.HOST_COUNTERS}
        out = super()._apply(fn, recurse)
        for name, counter in counters.items():
            if counter is not None:
                self._buffers[name] = counter if counter.device.type == "cpu" else counter.cpu()
        return out

    #: bytes a buffer costs whatever its capacity (the two int64 counters)
    FIXED_BYTES = 16

    @staticmethod
    def bytes_per_sample(sample_shape: Sequence[int], n_classes: int, store_logits: bool = False,
                         x_dtype: torch.dtype = torch.uint8) -> int:
        """Bytes one stored sample costs: input + label + task id (+ float32 logits)."""
        x_bytes = math.prod(sample_shape) * torch.empty((), dtype=x_dtype).element_size()
        extra = torch.empty((), dtype=label_dtype(n_classes)).element_size() + 2
        return x_bytes + extra + (4 * n_classes if store_logits else 0)

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return int(self.n_filled)

    @property
    def is_empty(self) -> bool:
        return int(self.n_filled) == 0

    def sample(self, n: int, exclude_task: int | None = None) -> ReplayBatch:
        """``n`` distinct stored samples drawn uniformly (fewer if the buffer holds fewer)."""
        filled = int(self.n_filled)
        if exclude_task is not None:
            pool = (self.task[:filled] != exclude_task).nonzero().squeeze(1)
            index = pool[torch.randperm(len(pool), device=pool.device)[:n]]
        else:
            index = torch.randperm(filled, device=self.x.device)[: min(n, filled)]
        return self.get(index)

    def get(self, index: Tensor) -> ReplayBatch:
        # index_select: the same rows as x[index], without advanced indexing's per-call setup
        logits = self.logits.index_select(0, index) if self.logits is not None else None
        return ReplayBatch(self.x.index_select(0, index), self.y.index_select(0, index).long(),
                           self.task.index_select(0, index), logits, index)

    def all(self) -> ReplayBatch:
        return self.get(torch.arange(int(self.n_filled), device=self.x.device))

    def class_counts(self) -> Tensor:
        return torch.bincount(self.y[: int(self.n_filled)].long(), minlength=self.n_classes)

    # ------------------------------------------------------------------ writing
    def add(self, x: Tensor, y: Tensor, task: int | Tensor | None = 0, logits: Tensor | None = None) -> Tensor:
        """Offer a batch to the buffer; returns the slot of each sample (-1 when not stored; a host tensor in the
        host pass). ``task=None`` (a task-free run, where the task is unknown) stores task id -1."""
        if task is None:
            task = -1
        if self.selection == "class_balanced":
            return self._add_class_balanced(x, y, task, logits)
        if self.selection == "herding":
            raise RuntimeError("a herding buffer is filled with set_contents() at the end of a task, not add()")
        return self._add_reservoir(x, y, task, logits)

    def _write(self, slots: Tensor, rows: Tensor, x, y, task, logits) -> None:
        # callers pass distinct slots, so index_copy_ writes exactly what self.x[slots] = ... would
        self.x.index_copy_(0, slots, x.index_select(0, rows).to(self.x.dtype))
        self.y.index_copy_(0, slots, y.index_select(0, rows).to(self.y.dtype))
        if isinstance(task, Tensor):
            self.task.index_copy_(0, slots, task.index_select(0, rows).to(self.task.dtype))
        else:
            self.task.index_fill_(0, slots, int(task))
        if self.logits is not None and logits is not None:
            self.logits.index_copy_(0, slots, logits.detach().index_select(0, rows).to(self.logits.dtype))

    def _write_range(self, start: int, x, y, task, logits) -> None:
        """Write a whole batch to the consecutive slots ``start ...`` (plain slice copies)."""
        end = start + len(y)
        self.x[start:end] = x
        self.y[start:end] = y
        if isinstance(task, Tensor):
            self.task[start:end] = task
        else:
            self.task[start:end] = int(task)
        if self.logits is not None and logits is not None:
            self.logits[start:end] = logits.detach()

    #: up to this many accepted samples, the host pass writes them row by row (cheaper than building index tensors)
    _ROW_WRITES = 2

    def _write_rows(self, placed: dict, x, y, task, logits) -> None:
        """Write row ``placed[slot]`` of the batch to ``slot`` for each entry (plain row copies)."""
        for slot, row in placed.items():
            self.x[slot] = x[row]
            self.y[slot] = y[row]
            self.task[slot] = task[row] if isinstance(task, Tensor) else int(task)
            if self.logits is not None and logits is not None:
                self.logits[slot] = logits[row].detach()

    def _add_reservoir(self, x, y, task, logits) -> Tensor:
        b, device, capacity = len(y), self.x.device, self.capacity
        seen = int(self.n_seen)
        on_host = self._decide_on_host
        # algorithm R: the i-th sample of the stream (i = seen, seen + 1, ...) goes to slot i while there is
        # room, else to a slot drawn uniformly from 0..i, kept only if that slot exists. The draws are made for
        # every batch (also while filling), so the random stream does not depend on the buffer's state; the host
        # pass draws on the CPU, whose values it reads without waiting for any device.
        uniform = torch.rand(b) if on_host else torch.rand(b, device=device)
        if seen + b <= capacity:  # still filling: sample i goes to slot seen + i
            self._write_range(seen, x, y, task, logits)
            slots = torch.arange(seen, seen + b, device=uniform.device)
        elif on_host:
            # decided in a short Python pass (for a batch of tens of samples cheaper than the device pass's tensor
            # operations, each a kernel launch on an accelerator)
            draws = reservoir_draws(uniform.tolist(), seen)
            slot_list = [seen + i if seen + i < capacity else (d if d < capacity else -1) for i, d in enumerate(draws)]
            # two samples of one batch taking the same slot: the later one wins, as in sequential insertion
            winner = {slot: i for i, slot in enumerate(slot_list) if slot >= 0}
            if len(winner) <= self._ROW_WRITES:
                self._write_rows(winner, x, y, task, logits)
            else:
                placed = self._host_to_device(torch.tensor([list(winner), list(winner.values())]))
                self._write(placed[0], placed[1], x, y, task, logits)
            slots = torch.tensor(slot_list, dtype=torch.long)
        else:
            # the device pass: no Python loop and no read of the draws; a drawn slot is kept if it exists;
            # samples still filling the buffer (seen + i < capacity) take slot seen + i
            draws = (uniform * torch.arange(seen + 1, seen + b + 1, device=device)).long()
            slots = draws.masked_fill_(draws >= capacity, -1)
            if seen < capacity:
                slots[: capacity - seen] = torch.arange(seen, capacity, device=device)
            # two samples of one batch taking the same slot: the later one wins, as in sequential insertion
            taken_later = (slots.unsqueeze(1) == slots.unsqueeze(0)).triu_(1).any(1)
            self._write_kept(slots, (slots >= 0) & ~taken_later, x, y, task, logits)
        self.n_seen.fill_(seen + b)
        if seen < capacity:  # once full, the filled count stays at capacity
            self.n_filled.fill_(min(capacity, seen + b))
        return slots

    def _host_to_device(self, index: Tensor) -> Tensor:
        """A host index tensor on the buffer's device: on a GPU through pinned memory in a non-blocking copy, so the
        host goes on without waiting for the device (the caching host allocator keeps the block until the copy has
        run)."""
        device = self.x.device
        if device.type == "cpu":
            return index
        if device.type == "cuda":
            index = index.pin_memory()
        return index.to(device, non_blocking=True)

    def _write_kept(self, slots: Tensor, keep: Tensor, x, y, task, logits) -> None:
        """Write row ``i`` to slot ``slots[i]`` where ``keep[i]`` (kept slots are distinct), without reading
        ``keep`` on the host: every row is written, the rows not kept repeat the write of the last kept row (or,
        when none is kept, write slot 0's own content back), so every slot written twice gets the same values."""
        rows = torch.arange(len(slots), device=slots.device)
        last_kept = torch.where(keep, rows, -1).max()
        any_kept = last_kept >= 0
        source = torch.where(keep, rows, last_kept.clamp(min=0))
        target = torch.where(any_kept, slots.index_select(0, source), 0)

        def new_or_old(stored: Tensor, new: Tensor) -> Tensor:
            new = new.index_select(0, source).to(stored.dtype)
            return torch.where(any_kept.view(-1, *[1] * (new.dim() - 1)), new, stored.index_select(0, target))

        self.x.index_copy_(0, target, new_or_old(self.x, x))
        self.y.index_copy_(0, target, new_or_old(self.y, y))
        task = task if isinstance(task, Tensor) else torch.full_like(rows, int(task))
        self.task.index_copy_(0, target, new_or_old(self.task, task))
        if self.logits is not None and logits is not None:
            self.logits.index_copy_(0, target, new_or_old(self.logits, logits.detach()))

    def _add_class_balanced(self, x, y, task, logits) -> Tensor:
        """GDumb's greedy class-balanced sampler (Prabhu et al., ECCV 2020), sample by sample in stream order:
        store while there is room; when full, a sample whose class holds fewer than ``capacity / n`` slots
        (``n`` = classes in the buffer, counting this one) evicts a random sample of the largest class;
        otherwise it is dropped. The decisions run on host copies of the counts (one device read per batch);
        the accepted samples are then written in one vectorised copy (a slot taken twice in one batch keeps
        the later sample, as sequential insertion would)."""
        b, device = len(y), self.x.device
        labels = y.tolist()
        counts = self.class_counts().tolist()
        n_present = sum(c > 0 for c in counts)
        filled = int(self.n_filled)
        # host copy of the stored labels, needed only to pick eviction victims
        stored = self.y.cpu().long() if filled + b > self.capacity else None
        slots = [-1] * b
        for i, label in enumerate(labels):  # greedy and order-dependent by definition
            n_classes = n_present + (counts[label] == 0)
            if filled < self.capacity:
                slot = filled
                filled += 1
            elif counts[label] * n_classes < self.capacity:
                largest = max(range(len(counts)), key=counts.__getitem__)
                candidates = (stored[:filled] == largest).nonzero().squeeze(1)
                slot = int(candidates[torch.randint(len(candidates), (1,))])
                counts[largest] -= 1
                n_present -= counts[largest] == 0
            else:
                continue
            n_present += counts[label] == 0
            counts[label] += 1
            slots[i] = slot
            if stored is not None:
                stored[slot] = label
        slots_t = torch.tensor(slots, dtype=torch.long, device=device)
        rows = (slots_t >= 0).nonzero().squeeze(1)
        if len(rows):
            winner = torch.full((self.capacity,), -1, dtype=torch.long, device=device)
            winner.scatter_reduce_(0, slots_t[rows], rows, reduce="amax")
            rows = rows[winner[slots_t[rows]] == rows]
            self._write(slots_t[rows], rows, x, y, task, logits)
        self.n_seen += b
        self.n_filled.fill_(filled)
        return slots_t

    def put(self, slots: Tensor, x: Tensor, y: Tensor, task: int | Tensor | None = 0,
            logits: Tensor | None = None) -> None:
        """Write sample ``i`` of the batch to slot ``slots[i]`` (for selections the owner computes, e.g. GSS);
        the filled count grows to cover the highest slot written."""
        if len(slots) == 0:
            return
        rows = torch.arange(len(slots), device=self.x.device)
        self._write(slots.to(self.x.device), rows, x, y, -1 if task is None else task, logits)
        self.n_filled.fill_(max(int(self.n_filled), int(slots.max()) + 1))

    def set_contents(self, x: Tensor, y: Tensor, task: Tensor, logits: Tensor | None = None) -> None:
        """Replace the whole content (herding and other selections computed by the owner)."""
        n = len(y)
        if n > self.capacity:
            raise ValueError(f"set_contents got {n} samples for a buffer of capacity {self.capacity}")
        rows = torch.arange(n, device=self.x.device)
        self._write(rows, rows, x.to(self.x.device), y.to(self.x.device), task.to(self.x.device),
                    None if logits is None else logits.to(self.x.device))
        self.n_filled.fill_(n)
