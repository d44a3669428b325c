"""Vector packs: the on-disk format (pack.json + safetensors), its schema and verification,
the model card, and the analysis of a pack's value vectors."""
