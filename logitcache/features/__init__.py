"""Teacher features beyond logits, in one place: what to cache, how it is cut from a model, the losses
that learn from it (FitNet, AT, RKD, ICKD, ReviewKD) and how a student run reads it back.

- ``feature_specs.py``: ``--features NAME=LAYER[:REDUCE]``, ``--student-features NAME=LAYER`` and
  ``--feature-loss NAME[=WEIGHT]`` specs (no torch).
- ``extract.py``: ``FeatureTap``, forward hooks on named modules, and the reductions (pool, attention,
  gram, map) a dump applies before it stores a feature.
- ``losses.py``: the feature losses as pure tensor functions, their connectors, and their registry.
- ``cached_features.py``: ``TeacherFeatures`` (a store's features by row) and ``FeaturePairs`` (a student's batches with them).
- ``distiller.py``: ``FeatureDistiller``: the student's taps and the losses of one run, built from its options.

The store side (arrays ``features/NAME``, their codec, their checks) is ``store/_features.py``.

    >>> from logitcache.features.feature_specs import parse_features
    >>> from logitcache.features.extract import FeatureTap
"""
