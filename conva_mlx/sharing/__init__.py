"""Sharing packs: the Hugging Face Hub, opening a pack from a directory or hf://, exporters
for PyTorch and llama.cpp, and importing control vectors."""
