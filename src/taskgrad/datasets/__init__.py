"""Dataset loaders (each takes a path; none downloads)."""

from . import images  # noqa: F401  (MNIST / Fashion-MNIST)
from . import multimnist, toy  # noqa: F401  (MultiMNIST/MultiFashion, the CAGrad toy)
from . import census  # noqa: F401  (census-income with the MMoE tasks)
from . import tabular  # noqa: F401  (School, Parkinsons as per-task designs)
