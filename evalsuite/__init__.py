"""evalsuite: evaluate quantized and MPO-compressed LLMs on the emergent-ability suite of Liu et al. 2023."""
