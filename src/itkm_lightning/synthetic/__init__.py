"""Procedural people: the embedded synthetic benchmark and the captioned pretraining corpus.

``world`` draws people, outfits and cameras; ``render`` and ``modalities`` turn them into pictures;
``spec`` and ``benchmark`` plan, store and load the benchmark (``SyntheticBenchmark`` is its dataset
source); ``corpus`` and ``captions`` make the pretraining corpus. Apart from the method's data layer
(``itkm_lightning.data``), which only sees the ``BenchmarkSplit`` records they produce.
"""
