"""The built-in benchmark problems, one module per data set (each registered by name in
:mod:`taskgrad.bench.registry`): ``synthetic``, ``multimnist``/``multifashion``
(:mod:`.multidigits`), ``census`` and ``qm9``/``qm9-u0``. The modules load their data only when a
problem is built.
"""
