"""Evaluation: the resumable eval runner, the judges (offline stance and fluency judges, the
OpenAI-compatible judge) and judge-check against reader labels."""
