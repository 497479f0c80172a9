"""Run ``astromer embed`` and kill the process with SIGKILL while it writes its N-th shard, as ``kill -9`` would.

Usage: ``python tests/crash_embed.py N <astromer embed arguments>``. The N-th shard's temporary file is created and
half written when the process dies, so it is left behind like a real interrupted write.
"""

import os
import signal
import sys

from astromer_app.cli import main
from astromer_app.embedding_store import ShardedOutput
from hub_datasets.atomic import atomic_file

_write_shard = ShardedOutput.write_shard
_calls = []


def _write_then_die(self, chunk, table, skipped):
    _calls.append(chunk)
    if len(_calls) == int(sys.argv[1]):
        with atomic_file(self.shard_path(chunk)) as temporary:
            temporary.write_bytes(b"PAR1 half a shard")
            os.kill(os.getpid(), signal.SIGKILL)
    return _write_shard(self, chunk, table, skipped)


if __name__ == "__main__":
    ShardedOutput.write_shard = _write_then_die
    sys.exit(main(["embed", *sys.argv[2:]]))
