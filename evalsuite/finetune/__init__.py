"""The optional fine-tune stage of a cell: training windows (``data``) and peft LoRA training, merged before
quantization (``lora-pre``) or kept as adapters on the frozen quantized linears (``lora-post``) (``train``).
peft builds the adapter layers; nothing here writes its own.

May import: evalsuite.errors, evalsuite.spec (the FinetuneSpec), and quant (the calibration corpus and its split).
Heavy imports (peft, datasets) happen inside the functions that need them.
"""
