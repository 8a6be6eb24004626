"""Shape aliases shared by the analysis functions.

Dimension names: ``batch`` rows, ``seq`` positions, ``vocab`` vocabulary entries, ``layer``
hidden-state layers (embeddings + one per decoder block), ``d_model`` hidden width, ``k``
top-k alternatives. The aliases document shapes; they are not checked at run time.
"""

from jaxtyping import Bool, Float, Int
from torch import Tensor

Logits = Float[Tensor, "batch seq vocab"]
LogProbs = Float[Tensor, "batch seq vocab"]
TokenIds = Int[Tensor, "batch seq"]
TokenMask = Bool[Tensor, "batch seq"]
PerToken = Float[Tensor, "batch seq"]
PerTokenInt = Int[Tensor, "batch seq"]
TopKIds = Int[Tensor, "batch seq k"]
TopKProbs = Float[Tensor, "batch seq k"]
Hidden = Float[Tensor, "seq d_model"]
LayerHidden = Float[Tensor, "layer seq d_model"]
PerLayer = Float[Tensor, " layer"]
PerSequence = Float[Tensor, " batch"]
