"""The Hugging Face Hub side of model bundles: download a repo's bundle files into huggingface_hub's cache,
upload a bundle folder; Hub errors become :class:`~meddet.errors.ModelError` naming the repo.

huggingface_hub is imported only when the Hub is used (a local bundle folder never needs it). The token
comes from the caller, else HF_TOKEN or the user's `hf auth login` — never from a repository file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from meddet.errors import ModelError

__all__ = ["download_bundle", "upload_bundle"]


def download_bundle(
    repo_id: str,
    patterns: Sequence[str],
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
) -> Path:
    """The local folder of Hub repo `repo_id` holding its files that match `patterns` (downloaded through
    huggingface_hub's cache; HF_HUB_OFFLINE=1 loads from the cache without the network)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=None if cache_dir is None else str(cache_dir),
                token=token,
                allow_patterns=list(patterns),
            )
        )
    except RepositoryNotFoundError:
        raise ModelError(f"{repo_id}: Hugging Face repo not found (or private without a token)") from None
    except RevisionNotFoundError:
        raise ModelError(f"{repo_id}: revision {revision!r} not found on the Hub") from None
    except LocalEntryNotFoundError as e:
        raise ModelError(
            f"{repo_id}: not in the local Hugging Face cache and the Hub cannot be reached ({e})"
        ) from None
    except HfHubHTTPError as e:
        raise ModelError(f"{repo_id}: download from the Hugging Face Hub failed ({e})") from None


def upload_bundle(
    folder: str | os.PathLike,
    repo_id: str,
    patterns: Sequence[str],
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload meddet model bundle",
    token: str | bool | None = None,
) -> str:
    """Create (if needed) the Hub model repo `repo_id` and upload the files of `folder` that match
    `patterns`; returns the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=Path(folder),
            repo_type="model",
            revision=revision,
            commit_message=commit_message,
            allow_patterns=list(patterns),
        )
    except HfHubHTTPError as e:
        raise ModelError(f"{repo_id}: push to the Hugging Face Hub failed ({e})") from None
    return str(getattr(info, "commit_url", info))
