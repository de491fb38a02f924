"""Configuration and throughput statistics of the inference engine."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

HEADS = ("label-token", "classifier")
ENGINES = ("hf", "vllm")


@dataclass
class InferenceConfig:
    """How pairs are batched and scored (shared by ``predict``, ``evaluate``, ``experiment`` and judging)."""

    max_length: int = 1024
    """Per-sequence token cap. The prompt style truncates each pair to fit (its own rules); no pair is dropped."""
    token_budget: int = 16384
    """Maximum padded tokens per batch (batch size x longest sequence). Sequences are also capped to it."""
    max_batch_size: int = 64
    """Maximum sequences per batch, whatever the budget."""
    bucket: bool = True
    """Length-sorted dynamic batches packed up to ``token_budget``; ``False`` = fixed-size batches in input order
    (``token_budget // max_length`` sequences each, so both modes have the same worst-case batch memory)."""
    bucket_window: int = 4096
    """Pairs per sorting window: batches of the first window run while later windows are still tokenized
    (0 = sort the whole input at once)."""
    swap_average: bool = True
    """Also score every pair with A and B exchanged, in the same batched pass, and average the two after
    swapping the A/B probabilities back (removes position bias)."""
    prefix_cache: bool = True
    """Label-token head only: encode the prompt style's shared prefix (instructions, criteria) once and reuse
    its ``past_key_values`` for every pair."""
    num_workers: int = 1
    """Background tokenization threads (0 = tokenize in the batching thread)."""
    num_processes: int | str = 1
    """Data parallel processes: an integer, or ``"auto"`` = one per visible GPU (1 on CPU)."""
    engine: str = "hf"
    """``hf`` (transformers, in process) or ``vllm`` (generative judging through vLLM, ``prefpred[vllm]``)."""
    prefetch: int = 2
    """Batches collated (padded, pinned) ahead of the model by the background thread."""
    progress: bool = True
    """Show a progress bar over batches (only on a terminal)."""

    def __post_init__(self) -> None:
        from prefpred.types import ConfigError

        if self.max_length < 1 or self.token_budget < 1 or self.max_batch_size < 1:
            raise ConfigError("max_length, token_budget and max_batch_size must be positive")
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown inference engine {self.engine!r} (use {', '.join(ENGINES)})")
        if isinstance(self.num_processes, str) and self.num_processes != "auto":
            try:
                self.num_processes = int(self.num_processes)
            except ValueError as e:
                raise ConfigError(f"num_processes must be an integer or 'auto', not {self.num_processes!r}") from e
        if isinstance(self.num_processes, int) and self.num_processes < 1:
            raise ConfigError("num_processes must be >= 1")

    @property
    def seq_cap(self) -> int:
        """Effective per-sequence token cap: ``min(max_length, token_budget)``."""
        return min(self.max_length, self.token_budget)

    @property
    def fixed_batch_size(self) -> int:
        """Batch size of the fixed (non-bucketed) mode: same worst-case padded tokens as the budget."""
        return max(1, min(self.max_batch_size, self.token_budget // self.seq_cap))


@dataclass
class InferenceStats:
    """Throughput of one scoring call (also logged as one line)."""

    pairs: int = 0
    """Pairs scored."""
    sequences: int = 0
    """Sequences run through the model (2 per pair with swap averaging)."""
    batches: int = 0
    seconds: float = 0.0
    """Wall-clock time of the whole call (tokenization, batching, model)."""
    cpu_seconds: float = 0.0
    """CPU time of the process (all threads) during the call; less sensitive than wall time to other load."""
    tokens: int = 0
    """Real (non-padding) tokens of all sequences, shared prefix included."""
    padded_tokens: int = 0
    """Batch size x longest sequence, summed over batches (shared prefix included)."""
    computed_tokens: int = 0
    """Token positions actually run through the model (padded; without the cached prefix when it is used)."""
    max_batch_tokens: int = 0
    """Largest batch size x longest sequence of any batch (the batch-memory high-water mark)."""
    prefix_tokens: int = 0
    """Length of the cached shared prefix (0 when the cache is off)."""
    truncated: int = 0
    """Sequences the engine had to shorten after the style's own truncation (should be 0)."""
    peak_memory_mb: float = 0.0
    """Peak accelerator memory (``torch.cuda.max_memory_allocated``) or, on CPU, peak resident set size."""
    device: str = ""
    processes: int = 1
    extra: dict = field(default_factory=dict)

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def pairs_per_cpu_s(self) -> float:
        return self.pairs / self.cpu_seconds if self.cpu_seconds > 0 else 0.0

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(pairs_per_s=self.pairs_per_s, tokens_per_s=self.tokens_per_s, pairs_per_cpu_s=self.pairs_per_cpu_s,
                 padding_fraction=self.padding_fraction)
        return d

    def summary(self) -> str:
        return (f"{self.pairs} pairs ({self.sequences} sequences, {self.batches} batches) in {self.seconds:.2f}s: "
                f"{self.pairs_per_s:.2f} pairs/s, {self.tokens_per_s:.0f} tokens/s, padding "
                f"{100 * self.padding_fraction:.1f}%, peak memory {self.peak_memory_mb:.0f} MB"
                f"{f', prefix cache {self.prefix_tokens} tokens' if self.prefix_tokens else ''}"
                f"{f', {self.processes} processes' if self.processes > 1 else ''} on {self.device}")

    @classmethod
    def merge(cls, parts: list[InferenceStats], seconds: float) -> InferenceStats:
        """Combine the stats of data-parallel workers (wall time = the parent's)."""
        out = cls(seconds=seconds, processes=len(parts), device=",".join(p.device for p in parts))
        for p in parts:
            for name in ("pairs", "sequences", "batches", "cpu_seconds", "tokens", "padded_tokens", "computed_tokens", "truncated"):
                setattr(out, name, getattr(out, name) + getattr(p, name))
            out.max_batch_tokens = max(out.max_batch_tokens, p.max_batch_tokens)
            out.prefix_tokens = max(out.prefix_tokens, p.prefix_tokens)
            out.peak_memory_mb = max(out.peak_memory_mb, p.peak_memory_mb)
        return out
