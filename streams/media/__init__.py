"""Hearth's media engine: timestamped items, stages, a graph, sinks, a relay.

No Django here (``tests/test_engine.py`` checks the import graph). The same
:class:`~streams.media.graph.GraphRunner` runs a broadcast live
(:class:`~streams.media.graph.TrackSource`) and ``manage.py process_media`` over a
file (:class:`~streams.media.graph.FileSource`).
"""
