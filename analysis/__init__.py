"""Pure tensor math for token-level analysis of language-model outputs.

Every function here works on tensors a single teacher-forced forward pass already produced
(logits, hidden states, token ids, masks). Nothing in this package loads models, touches a
database or renders anything: ``backend`` feeds it and ``app`` shows its results.
"""

from tokenprism.analysis.registry import MetricSpec, get_metric, list_metrics

__all__ = ["MetricSpec", "get_metric", "list_metrics"]
