"""Teacher labels and synthetic pairs over an OpenAI-compatible API.

* :func:`label_pairs` asks a teacher model (``criteria-10-json`` style, structured JSON output) to judge every
  pair twice, with A and B exchanged, and writes soft labels as prefpred JSONL (``prefpred synth label``);
* :func:`synth_pairs` has candidate models answer new prompts, pairs the answers and labels them
  (``prefpred synth pairs``).

Both run asynchronously with bounded concurrency, a rate limit and counted retries, and keep every finished
answer in an append-only cache so a killed run resumes without losing or repeating work.

Typical use, with a teacher served by vLLM (``vllm serve Qwen/Qwen2.5-72B-Instruct``, which honours the
``json_schema`` response format by guided decoding)::

    export OPENAI_API_KEY=EMPTY
    prefpred synth label --data train.csv --base-url http://127.0.0.1:8000/v1 \
        --model Qwen/Qwen2.5-72B-Instruct --out labels.jsonl --concurrency 32
    prefpred run ... --extra-data labels.jsonl --extra-weight 0.5     # distil: mix with the human labels

Any OpenAI-compatible server works; its structured-output dialect is detected (``--json-mode auto``): vLLM and
hosted APIs take ``json_schema``; llama.cpp's server (``python -m llama_cpp.server --model FILE.gguf``) refuses
it and gets ``{"type": "json_object", "schema": ...}``; ``transformers serve`` accepts and ignores it, so the
answer is searched for the JSON object in whatever the model wrote. A run never hangs: every attempt has an
overall deadline (``--timeout``) and the run stops with one line after ``--max-consecutive-failures`` attempts in
a row got no usable answer. An existing ``--out`` is only replaced with ``--force``, and never the input.

The labels file is prefpred JSONL (``prefpred.data.load_pairs`` reads it); failed pairs carry
``"failed": true``, the error and the teacher's raw texts and no label, and are left out of training.
"""

from prefpred.synth.cache import AnswerCache, cache_key
from prefpred.synth.client import CircuitOpen, ClientConfig, FatalAPIError, RunStats, resolve_api_key
from prefpred.synth.label import LabelReport, label_pairs
from prefpred.synth.pairs import GenerationConfig, PairsReport, read_prompts, synth_pairs
from prefpred.synth.schema import STYLE_VERSION, aggregate, answer_schema, build_messages, parse_answer

__all__ = [
    "STYLE_VERSION", "AnswerCache", "CircuitOpen", "ClientConfig", "FatalAPIError", "GenerationConfig", "LabelReport",
    "PairsReport", "RunStats", "aggregate", "answer_schema", "build_messages", "cache_key", "label_pairs",
    "parse_answer", "read_prompts", "resolve_api_key", "synth_pairs",
]
