"""Dataset loaders (each takes a path; none downloads)."""

from . import images  # noqa: F401  (MNIST / Fashion-MNIST, issue 7)
from . import multimnist, toy  # noqa: F401  (issue 6: MultiMNIST/MultiFashion, the CAGrad toy)
from . import census  # noqa: F401  (issue 6: census-income, MMoE tasks)
from . import tabular  # noqa: F401  (issue 8: School, Parkinsons as per-task designs)
