"""The realistic Django project with the garbage collector watched, for benches/gc_pauses.py.

`wsgi_app` and `asgi_app` are the project's applications unchanged. Importing this module also
installs a `gc.callbacks` hook that times every collection, and a thread that writes, once a
second, the count and total time of the collections of each generation so far, and the
duration of every full (generation 2) collection, to the JSON file named by $GC_PROBE_OUT.
"""

import gc
import json
import os
import threading
import time

from benches.realistic.asgi import application as asgi_app  # noqa: F401
from benches.realistic.wsgi import application as wsgi_app  # noqa: F401

_started: dict[int, float] = {}
# Per generation: collections and seconds in them; and each full collection's seconds.
_stats = {generation: [0, 0.0] for generation in range(3)}
_full: list[float] = []


def _timed(phase: str, info: dict) -> None:
    generation = info["generation"]
    if phase == "start":
        _started[generation] = time.perf_counter()
    elif generation in _started:
        took = time.perf_counter() - _started.pop(generation)
        stats = _stats[generation]
        stats[0] += 1
        stats[1] += took
        if generation == 2:
            _full.append(took)


def _write_stats(path: str) -> None:
    while True:
        time.sleep(1)
        snapshot = {
            "generations": {
                str(generation): {"count": count, "seconds": total}
                for generation, (count, total) in _stats.items()
            },
            "full": list(_full),
        }
        with open(path + ".tmp", "w") as out:
            json.dump(snapshot, out)
        os.replace(path + ".tmp", path)


gc.callbacks.append(_timed)
threading.Thread(target=_write_stats, args=(os.environ["GC_PROBE_OUT"],), daemon=True).start()
