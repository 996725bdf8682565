"""OpenAI- and Anthropic-compatible endpoints: Claude Code sessions behind chat-model APIs.

``continuity`` says how a stateless chat request names the conversation it continues;
``reply`` turns the CLI's stdout lines into the text a chat client sees; ``chat`` runs one turn
end to end for both APIs; ``openai/`` and ``anthropic/`` each hold their request and response
schemas and their router, with their own error shape.
"""
