"""Multi-view stores, in one place: the view grammar and its draws, the views' record in a store,
and the replay that rebuilds each view for a student.

- ``view_specs.py``: ``--augment`` specs (``crop=…,shift=…,flip,size=…``), the seeded draws of view
  parameters, ``apply_view`` (the one function dump and replay both cut views with), view hashes.
- ``record.py``: the teacher attribute's ``views`` record and the bytes a view's parameters take.
- ``replay.py``: views drawn for a dump (``DumpViews``), replayed for a student (``ViewReplay``),
  checked against their recorded hashes (``check_view_hashes``).

    >>> from logitcache.views.view_specs import parse_augment, apply_view
    >>> from logitcache.views.replay import DumpViews, ViewReplay, check_view_hashes
"""
