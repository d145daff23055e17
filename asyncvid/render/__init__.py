"""Pieces of ``asyncvid render``: model folders and their kinds (:mod:`.models`) and the streaming
decode/encode path (:mod:`.stream`). The command itself lives in :mod:`asyncvid.cli.render`."""
