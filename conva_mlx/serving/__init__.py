"""`conva-mlx serve`: an OpenAI-compatible HTTP server with per-request value steering,
decoding concurrent requests together (continuous batching, each row its own steering)."""
