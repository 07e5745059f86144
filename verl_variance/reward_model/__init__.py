"""Ensemble reward model: K linear reward heads on one transformer (Banerjee & Gopalan, Section 4, Appendix 7).

Stage 1 (``stage1``) fully fine-tunes one reward model with the Bradley–Terry loss; stage 2 (``heads``)
freezes the backbone and trains K heads in parallel with the summed loss Σ_k BT(θ_k), so that one
forward pass gives K rewards whose sample variance is σ²(x, y). The result is a plain Hugging Face
``AutoModelForSequenceClassification`` folder with ``num_labels = K`` plus an ``ensemble.json`` record.
"""
