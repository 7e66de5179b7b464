"""Gateway: the OpenAI-compatible Litestar proxy in front of vLLM that counts every token."""
