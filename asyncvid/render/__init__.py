"""``asyncvid render``: job files rendered to videos and manifests.

* :mod:`.jobfile` reads a YAML job file (one-line errors with their place); :mod:`.schema` is a
  job's fields and how its kind (t2v / i2v) is decided; :mod:`.inputs` checks, hashes and reads a
  text-to-video job's ControlNet folder, conditioning frames and input video;
* :mod:`.select` picks a run's jobs (``--shard``, ``--only``); :mod:`.tasks` turns them into tasks
  (config hash, output paths, up to date or not, model folders, manifest);
* :mod:`.runner` is the command (dry run, one device, N local ranks); :mod:`.launched` the same
  started once per rank by srun/torchrun; :mod:`.batch` their shared bookkeeping (partial files,
  pending / skipped / failed, summary and profile);
* :mod:`.loop` is what every rank runs over the tasks; :mod:`.stream` denoises, decodes in chunks
  and encodes on a background thread.

Models come from :mod:`asyncvid.catalog`; the ``render`` argument parser is
:mod:`asyncvid.cli.render`.
"""
