"""Scale-out store: ClickHouse (18.16 and later) over its HTTP interface (docs/clickhouse.md).

- :mod:`.transport`: the storage URL, the HTTP session, errors, RowBinary/JSONEachRow layouts;
- :mod:`.schema`: the DDL and the content hashes that are every row's id;
- :mod:`.store`: :class:`ClickHouseStore`, the store's methods (writes, reads, retention);
- :mod:`.planner`: the pruned ``metadata=1`` read and the tree invariant it relies on.
"""

from aggregator.store.clickhouse.schema import series_hash, stack_hash
from aggregator.store.clickhouse.store import ClickHouseStore
from aggregator.store.clickhouse.transport import ClickHouseError, parse_url

__all__ = ["ClickHouseError", "ClickHouseStore", "parse_url", "series_hash", "stack_hash"]
