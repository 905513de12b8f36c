"""The results store: every row a sweep writes, in Arrow/Parquet, on a local path or a URI.

`storage` opens the filesystem; `schema` fixes the tables' columns; `rows` builds result rows
from trial outcomes; `results` writes and reads them (`load_results`, `load_stages`);
`compact` merges small files; `gc` removes stage checkpoints nothing refers to; `lock` keeps
two writers (a nightly and a sweep) from sharing one store.
"""
