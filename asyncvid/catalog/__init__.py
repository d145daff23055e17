"""The model catalogue shared by ``render``, ``bench``, ``plan`` and ``eval``: which models there are
and how to get a pipeline of one.

* :mod:`.builtin`: built-in model names (the packaged default model, random-weight ones built into
  the cache on first use);
* :mod:`.folders`: local diffusers folders: their kind (t2v / i2v), what is missing, resolving a
  job's model to the folder to load;
* :mod:`.pipelines`: loading a folder, building a model by name or preset, a benchmark call's kwargs;
* :mod:`.presets`: random-weight pipelines built from configs (tests, benchmarks);
* :mod:`.quiet`: keeping diffusers and transformers offline and quiet.

Importing :mod:`.builtin`, :mod:`.folders` or :mod:`.pipelines` is cheap (no torch, no diffusers).
"""
