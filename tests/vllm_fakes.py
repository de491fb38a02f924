"""Objects shaped like vLLM's outputs (vLLM cannot run here): what the engine reads from ``LLM.generate``."""

from __future__ import annotations


class Logprob:  # shaped like vllm.sequence.Logprob
    def __init__(self, logprob, rank=1, decoded_token=None):
        self.logprob, self.rank, self.decoded_token = logprob, rank, decoded_token


class Completion:  # shaped like vllm.outputs.CompletionOutput
    def __init__(self, logprobs):
        self.logprobs = logprobs


class RequestOutput:  # shaped like vllm.outputs.RequestOutput
    def __init__(self, logprobs):
        self.outputs = [Completion(logprobs)]
