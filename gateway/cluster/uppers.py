"""What a node holding an upper platform's lease keeps in Redis for the node that takes over.

One hash per upper, ``{prefix}upst:{upper_id}``, written only by the holder of the lease
``upper:{upper_id}`` and read fresh by the next holder when it takes over:

* ``reg``: the registration (``call_id``, ``from_tag``, ``cseq``): the next holder goes on with
  the same Call-ID and a higher CSeq, so the upper sees a refresh of the one lower platform it
  knows (RFC 3261 §10.2.4, §10.3 step 7).
* ``dlg:{call_id}``: each live media dialog with the upper (Call-ID, tags, From/To, remote
  target, the upper's address, our CSeq): the next holder ends them with BYE (they died with
  the node that held them).
* ``sub:{kind}``: each subscription the upper made to us (its dialog, Event, expiry, the Query
  it subscribed with): the next holder goes on notifying in the same dialog.

Every write is fenced in Redis itself: a Lua script compares the lease's value with the
writer's (``node_id:token``) and writes nothing when the lease is no longer the writer's, so a
node that lost the lease cannot overwrite what its successor keeps. Values are JSON; the uplink
decides what goes in them.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

# KEYS: the lease, the hash. ARGV: the lease value, the number of fields to delete, those
# fields, then field/value pairs to set. 1 when written, 0 when the lease is not the writer's.
_WRITE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local n = tonumber(ARGV[2])
for i = 3, 2 + n do redis.call('HDEL', KEYS[2], ARGV[i]) end
for i = 3 + n, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
"""


class UpperState:
    """The per-upper hashes (module docstring)."""

    def __init__(self, client: aioredis.Redis, *, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._write: Any = client.register_script(_WRITE)

    def key(self, upper_id: str) -> str:
        return f"{self.prefix}upst:{upper_id}"

    def lease_key(self, upper_id: str) -> str:
        return f"{self.prefix}lease:upper:{upper_id}"

    async def write(
        self,
        upper_id: str,
        lease_value: str,
        *,
        put: dict[str, Any] | None = None,
        drop: list[str] | None = None,
    ) -> bool:
        """Set the fields of ``put`` (JSON values) and delete those of ``drop``, if the lease
        ``upper:{upper_id}`` still has ``lease_value``. True when written."""
        drop = drop or []
        args: list[str | int] = [lease_value, len(drop), *drop]
        for name, value in (put or {}).items():
            args += [name, json.dumps(value, separators=(",", ":"))]
        keys = [self.lease_key(upper_id), self.key(upper_id)]
        return bool(await self._write(keys=keys, args=args))

    async def load(self, upper_id: str) -> dict[str, Any]:
        """Every field of the upper's hash, decoded (a field that is not JSON is left out)."""
        raw = await self.client.hgetall(self.key(upper_id))
        out: dict[str, Any] = {}
        for name, value in raw.items():
            field = name.decode() if isinstance(name, bytes) else str(name)
            try:
                out[field] = json.loads(value)
            except ValueError:
                continue
        return out

    async def forget(self, upper_id: str) -> None:
        """The upper was removed: nothing of it is kept."""
        await self.client.delete(self.key(upper_id))
