"""Internals of the SynthStreet generator (public API: :mod:`oodseg.data.synthetic`).

``textures`` noise tiles, ``canvas`` camera + painter, ``scene`` street layout and
objects, ``objects`` anomaly/outlier sprites, ``conditions`` image corruptions.
"""
