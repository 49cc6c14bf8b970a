"""The model families: decoder core, Llama family, OPT, GGUF, loading and export; parity with transformers."""
