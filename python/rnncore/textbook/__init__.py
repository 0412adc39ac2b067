"""The textbook's own code, once: the plain-NumPy layers of *Deep Learning from Scratch 2*
(:mod:`rnncore.textbook.layers`, per-step cells in Python loops) and its language models
(:mod:`rnncore.textbook.models`: SimpleRnnlm, Rnnlm, BetterRnnlm), written against any
layers module with the book's interface. They are the test oracle of
:mod:`rnncore.time_layers` and the baseline of the textbook benchmarks: the same model code
runs on ``rnncore.textbook.layers`` and on ``rnncore.time_layers``.
"""
