"""Dataset loaders (each takes a path; none downloads)."""

from . import (  # noqa: F401  (MultiMNIST/MultiFashion, the CAGrad toy)
    census,  # noqa: F401  (census-income with the MMoE tasks)
    images,  # noqa: F401  (MNIST / Fashion-MNIST)
    multimnist,
    tabular,  # noqa: F401  (School, Parkinsons as per-task designs)
    toy,
)
