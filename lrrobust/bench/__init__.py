"""Benchmarks: ``timing`` (median time and peak memory of a callable, CPU or CUDA) and ``op`` (the local
relation op against convolutions, issue 2's ``lrrobust bench op``)."""
