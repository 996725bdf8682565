"""OpenAI- and Anthropic-compatible endpoints: Claude Code sessions behind chat-model APIs.

``continuity`` decides which Claude session a stateless chat request continues; ``reply``
turns the CLI's stdout lines into the text a chat client sees; ``turns`` runs one turn end to
end; ``openai`` and ``anthropic`` parse requests and shape responses for each API.
"""
