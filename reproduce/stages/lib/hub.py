"""Reading a dataset as its hub repository lays it out: data files by path, never a loading script.

`datasets` >= 4 refuses loading scripts ("Dataset scripts are no longer supported"), and with a script in the
repository even `load_dataset(REPO, data_files=...)` is refused. So a recipe item (a source or a benchmark) is read
in this order:
  1. `files:` (paths or globs in the repo, at `revision`, default main) through the builder of their `format`
     (json | parquet | arrow | csv; from the extension if not said): `hf://datasets/REPO@REV/PATH`;
  2. a repo without a loading script: `load_dataset(REPO, subset, split=...)`, the repo's own layout as `datasets`
     reads it (its card's `configs`, or the hub's file-name conventions);
  3. the hub's parquet conversion, branch refs/convert/parquet: `{subset or default}/{split}/*.parquet`;
  4. else one line naming the fix.
Every read streams (no Arrow cache of a 859K-row dataset), with only the `columns` asked for where the builder
can select them. Gated repositories (recipe `gated: true`, or a 401/403) fail with one line naming HF_TOKEN.
"""
from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
FORMATS = ("json", "parquet", "arrow", "csv")
CONVERTED = "refs%2Fconvert%2Fparquet"     # the hub's parquet conversion, %2F-encoded as a revision in hf:// paths


class BadSource(Exception):
    """A recipe names a dataset, file or filter that cannot be read as said: one line, exit 2."""


class Gated(BadSource):
    """The repository is gated and this token (or none) has no access."""


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def gated_message(repo: str, why: str) -> str:
    return (f"dataset {repo} is gated ({why}): set HF_TOKEN to a token of an account that has accepted its "
            f"conditions at {endpoint()}/datasets/{repo}")


def _fs():
    from huggingface_hub import HfFileSystem

    return HfFileSystem(skip_instance_cache=True)


def _errors(repo: str, err: BaseException) -> BadSource | None:
    """A hub error anywhere in the chain -> its one-line BadSource (None: not a hub error we know)."""
    from huggingface_hub import errors

    seen = err
    while seen is not None:
        if isinstance(seen, errors.GatedRepoError):
            return Gated(gated_message(repo, "no access with " + ("this HF_TOKEN" if os.environ.get("HF_TOKEN")
                                                                   else "no HF_TOKEN set")))
        status = getattr(getattr(seen, "response", None), "status_code", None)
        if status in (401, 403):
            return Gated(gated_message(repo, f"HTTP {status}"))
        if isinstance(seen, errors.RevisionNotFoundError):
            return BadSource(f"dataset {repo}: revision not found on {endpoint()} ({str(seen).splitlines()[0]})")
        if isinstance(seen, errors.RepositoryNotFoundError):
            return BadSource(f"dataset {repo} not found on {endpoint()}: check the recipe's dataset id")
        if isinstance(seen, errors.EntryNotFoundError):
            return BadSource(f"dataset {repo}: a file is missing ({str(seen).splitlines()[0]})")
        seen = seen.__cause__ or seen.__context__
    return None


def check_access(item: dict) -> None:
    """A recipe item marked `gated: true` needs HF_TOKEN before any request."""
    if item.get("gated") and not os.environ.get("HF_TOKEN"):
        raise Gated(gated_message(item["dataset"], "the recipe marks it gated and HF_TOKEN is not set"))


def _glob(fs, repo: str, rev: str, pattern: str) -> list[str]:
    return sorted(fs.glob(f"datasets/{repo}@{rev}/{pattern.lstrip('/')}"))


def _converted(fs, repo: str, item: dict) -> list[str]:
    """The hub's parquet conversion of the item's subset and split ([] if the repo has none)."""
    from huggingface_hub import errors

    try:
        found = _glob(fs, repo, CONVERTED, f"{item.get('subset') or 'default'}/{item['split']}/*.parquet")
    except (errors.RevisionNotFoundError, FileNotFoundError):
        return []
    return ["hf://" + f for f in found]


def _script(fs, repo: str, rev: str) -> str | None:
    """The repo's loading script (REPO_NAME.py at its root, as `datasets` looks for it), if it has one."""
    name = repo.split("/")[-1] + ".py"
    try:
        return name if fs.exists(f"datasets/{repo}@{rev}/{name}") else None
    except Exception:
        return None


def data_files(item: dict) -> tuple[str | None, list[str]]:
    """(builder, hf:// URLs) of an item, or (None, []) when `datasets` should read the repo's own layout."""
    repo, rev = item["dataset"], str(item.get("revision") or "main")
    fs = _fs()
    try:
        fs._api.dataset_info(repo, revision=rev)       # a missing repo or revision: one clear line, here
        if item.get("files"):
            urls = []
            for pattern in item["files"]:
                found = _glob(fs, repo, rev, pattern)
                if not found:
                    script = _script(fs, repo, rev)
                    if script is None:      # a converted layout: the repo's own, as `datasets` reads it
                        print(f"problems: {repo}@{rev} has no {pattern}; reading the repo's own layout",
                              file=sys.stderr)
                        return None, []
                    raise BadSource(f"dataset {repo}@{rev}: no file matches {pattern!r}"
                                    + (f" (the repo has the loading script {script}; name its data files)"
                                       if script else "; set the source's `files` to paths in the repo"))
                urls += ["hf://" + f for f in found]
            fmt = item.get("format") or BUILDERS.get(os.path.splitext(urls[0])[1])
            if fmt not in FORMATS:
                raise BadSource(f"dataset {repo}: format of {urls[0]} unknown; set `format` to one of "
                                f"{', '.join(FORMATS)}")
            return fmt, urls
        script = _script(fs, repo, rev)
        if script is None:
            return None, []
        conv = _converted(fs, repo, item)
        if conv:
            return "parquet", conv
        raise BadSource(f"dataset {repo} has only the loading script {script} and no parquet conversion: datasets "
                        f">= 4 does not run scripts; name its data files in the recipe (`files: [...]`, with "
                        f"`format`) or use a copy of the dataset with data files")
    except BadSource:
        raise
    except Exception as e:
        raise (_errors(repo, e) or e) from None


def stream(item: dict, columns: Iterable[str] | None = None):
    """The rows of an item's split as an IterableDataset (read as they are iterated)."""
    import datasets

    check_access(item)
    repo = item["dataset"]
    builder, urls = data_files(item)
    cols = list(columns) if columns else None
    where = f"{repo}" + (f"/{item['subset']}" if item.get("subset") else "") + f" [{item['split']}]"
    print(f"problems: streaming {where}" + (f" from {len(urls)} {builder} file(s)" if urls else ""), file=sys.stderr)
    try:
        if builder is None:
            ds = datasets.load_dataset(repo, item.get("subset"), split=item["split"], streaming=True,
                                       revision=item.get("revision"))
        else:
            kwargs = {"columns": cols} if builder == "parquet" and cols else {}
            ds = datasets.load_dataset(builder, data_files={"train": urls}, split="train", streaming=True, **kwargs)
        if cols:
            ds = ds.select_columns([c for c in cols if c in (ds.column_names or cols)])
        return ds
    except BadSource:
        raise
    except Exception as e:
        raise (_errors(repo, e) or BadSource(f"dataset {repo}: {type(e).__name__}: {str(e).splitlines()[0]}")) \
            from None


def rows(item: dict, columns: Iterable[str] | None = None) -> Iterator[dict]:
    """Iterate an item's rows; hub errors met while reading become one-line BadSource/Gated."""
    it = iter(stream(item, columns))
    while True:
        try:
            row = next(it)
        except StopIteration:
            return
        except Exception as e:
            raise (_errors(item["dataset"], e) or BadSource(f"dataset {item['dataset']}: {type(e).__name__}: "
                                                            f"{str(e).splitlines()[0]}")) from None
        yield row


def row_count(item: dict) -> int | None:
    """Rows of the item's split as the hub reports them, without reading the rows: the parquet footers of its
    files (or of the hub's parquet conversion); None when neither is parquet."""
    import pyarrow.parquet as pq

    check_access(item)
    repo = item["dataset"]
    fs = _fs()
    try:
        builder, urls = data_files(item)
        if builder != "parquet":
            urls = _converted(fs, repo, item)
        if not urls:
            return None
        total = 0
        for url in urls:
            with fs.open(url[len("hf://"):], "rb", block_size=64 * 1024) as f:
                total += pq.ParquetFile(f).metadata.num_rows
        return total
    except BadSource:
        raise
    except Exception as e:
        err = _errors(repo, e)
        if err is not None:
            raise err from None
        return None
