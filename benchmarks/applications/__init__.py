"""Application experiments: run as scripts, or import as ``benchmarks.applications.<name>``
(each script puts this folder on ``sys.path`` for its sibling imports such as ``common``)."""
