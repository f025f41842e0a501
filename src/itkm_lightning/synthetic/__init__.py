"""Procedural people: the embedded synthetic benchmark and the captioned pretraining corpus.

``world`` draws people, outfits and cameras; ``render`` and ``modalities`` turn them into pictures;
``spec`` and ``benchmark`` plan, store and load the benchmark; ``corpus`` and ``captions`` make the
pretraining corpus. The method's data layer sees only the ``BenchmarkSplit`` records the benchmark
loads, through its dataset source ``itkm_lightning.data.SyntheticBenchmark`` (``data/sources.py``).
"""
