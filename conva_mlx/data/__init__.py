"""Value data: the shipped JSONL (values, context-controlled pairs, uncontrolled pairs, gate
queries, dilemmas, reader-labelled judge replies, in the folders beside this file), the
records that read it (dataset), and its validation and generation."""
