"""The OpenAI Chat Completions API: ``/v1/models`` and ``/v1/chat/completions``."""
