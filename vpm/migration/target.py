"""The two ends of a migration and the settings they are made from.

The source is the local folder (VPM_DATA_DIR) read through the engine, exactly as the app reads it (opening it
upgrades an old products.json catalog first). The target is the bucket the S3 settings name, whether or not
S3_ENABLED is on yet: switching it on is the step after a migration. The bucket's tables are opened for
reading only while planning; nothing creates a table in the bucket until `execute` has rows to write.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from typing import TYPE_CHECKING

from vpm.backends import engine
from vpm.core import config
from vpm.core.config import Settings
from vpm.core.errors import VpmError
from vpm.core.storage import S3Storage, Storage, StorageError, make_storage, send_small_puts_at_once
from vpm.migration.flow import Throttles

if TYPE_CHECKING:  # the tables' modules import pyarrow and numpy: a re-run decided from listings needs neither
    from vpm.core.catalog import CatalogStore
    from vpm.core.matcher import Matcher
    from vpm.core.stores import Stores
    from vpm.core.vector_index import VectorIndex

PRODUCTS_TABLE = "products"


class MigrationError(VpmError, ValueError):
    """The migration cannot start (or cannot run this plan); the message says what to set or fix."""


def require_bucket(settings: Settings) -> str:
    if not settings.s3_bucket_name:
        raise MigrationError(
            "S3_BUCKET_NAME is not set: the migration copies the local catalog into that bucket; set "
            "S3_BUCKET_NAME (and S3_REGION) in .env or the environment"
        )
    return settings.s3_bucket_name


def half_set_keys(settings: Settings) -> str | None:
    """The missing half of the configured AWS key pair, as one line; None when both or neither are set."""
    return config.half_set_keys(settings.aws_access_key_id, settings.aws_secret_access_key)


def target_settings(settings: Settings) -> Settings:
    """The settings with S3 switched on: what the app will run with after the migration."""
    require_bucket(settings)
    return settings.model_copy(update={"s3_enabled": True, "vpm_storage": "s3"})


def source_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"s3_enabled": False, "vpm_storage": "local"})


def source_storage(settings: Settings) -> Storage:
    """The local folder (VPM_DATA_DIR) the migration reads, even while S3_ENABLED is true."""
    return make_storage(source_settings(settings))


def target_storage(settings: Settings) -> S3Storage:
    """The bucket the S3 settings describe, even while S3_ENABLED is false."""
    try:
        storage = make_storage(target_settings(settings))
    except (StorageError, MigrationError):
        raise
    except Exception as err:  # noqa: BLE001 - botocore refusing a profile or config file, before any request
        raise MigrationError(f"the S3 client could not be set up ({type(err).__name__}: {err}); check "
                             "AWS_PROFILE and the AWS configuration files") from None
    assert isinstance(storage, S3Storage)
    return storage


def table_exists(storage: Storage, where: engine.Location, name: str) -> bool:
    """Whether any object of the table is in storage (listed through Storage, so nothing is opened)."""
    return bool(storage.list(f"{where.prefix}{name}.lance/", page_size=1).objects)


# --------------------------------------------------------------------------------------------- the ends


class Source:
    """The local catalog, read through a Matcher on the local folder (no model is loaded)."""

    def __init__(self, settings: Settings, storage: Storage | None = None):
        local = source_settings(settings)
        self.storage = storage or source_storage(settings)
        self._settings = local
        self.description = self.storage.description

    @cached_property
    def matcher(self) -> Matcher:
        from vpm.core.wiring import build_matcher

        return build_matcher(self._settings, storage=self.storage)

    def exists(self) -> bool:
        """A products table or a products.json still to be upgraded (so an empty folder stays untouched)."""
        return self.matcher.catalog_exists()

    @property
    def catalog(self) -> CatalogStore:
        return self.matcher.catalog

    def model_ids(self) -> list[str]:
        if not self.exists():
            return []
        from vpm.backends.lance_vectors import existing_model_ids

        self.matcher.catalog.count()  # opening the catalog upgrades an old one, with its vectors
        return existing_model_ids(self.matcher.where)

    def vectors(self, model_id: str) -> VectorIndex:
        return self.matcher.vector_index(model_id)


class Target:
    """The bucket: its objects through Storage, its tables through the engine."""

    def __init__(self, settings: Settings, storage: S3Storage | None = None):
        self.settings = target_settings(settings)
        self.storage = storage or target_storage(settings)
        self.where = engine.location(self.settings)
        self.description = self.storage.description
        self.throttles = Throttles()  # the answers asking us to slow down, for the uploads' InFlight gate
        self.throttles.watch(self.storage.client)
        # PUTs of up to 1 MiB skip the Expect: 100-continue round trip. S3Storage hooks every client it makes
        # already; a second registration changes nothing, and this one keeps it true of any client handed in.
        send_small_puts_at_once(self.storage.client)

    def has_products_table(self) -> bool:
        return table_exists(self.storage, self.where, PRODUCTS_TABLE)

    def has_old_catalog(self) -> bool:
        """A products.json of the first release that the app has not upgraded into tables yet."""
        from vpm.core.upgrade import needs_upgrade

        return needs_upgrade(self.storage, self.settings.s3_metadata_key)

    def has_vectors_table(self, model_id: str) -> bool:
        from vpm.backends.lance_vectors import table_name

        return table_exists(self.storage, self.where, table_name(model_id))

    def model_ids(self) -> list[str]:
        from vpm.backends.lance_vectors import TABLE_PREFIX, existing_model_ids

        if not self.storage.list(f"{self.where.prefix}{TABLE_PREFIX}", page_size=1).objects:
            return []  # no vector table: no need to open a connection at all
        return existing_model_ids(self.where)

    def _tables(self) -> Stores:
        """The bucket's tables through the composition root, known to be there (planning and verifying only
        read): one that does not open is refused as unreadable, as the app refuses it."""
        from vpm.core.wiring import stores_for

        return stores_for(self.settings, self.storage, known=True)

    def catalog_for_reading(self, exists: bool | None = None) -> CatalogStore | None:
        """The bucket's products table when it exists (`exists`: already known); None otherwise. Opening never
        creates it."""
        if not (self.has_products_table() if exists is None else exists):
            return None
        return self._tables().catalog

    def catalog_for_writing(self) -> CatalogStore:
        """The products table, created if need be, after the app's own upgrade of an old products.json: the
        bucket's products are then compared with ours before anything of ours is written."""
        from vpm.core.wiring import build_matcher

        bucket = build_matcher(self.settings, storage=self.storage)
        return bucket.catalog

    def vectors_for_reading(self, model_id: str) -> VectorIndex:
        return self._tables().vector_index(model_id, None, True)

    def vectors_for_writing(self, model_id: str, dim: int, exists: bool) -> VectorIndex:
        return self._tables().vector_index(model_id, dim, exists)


# ------------------------------------------------------------------------------------------ fingerprint

# The settings a plan depends on: change one and the plan no longer describes what Migrate would do.
_PLAN_SETTINGS = ("s3_bucket_name", "s3_region", "s3_endpoint_url", "s3_image_prefix", "s3_thumbnail_prefix",
                  "s3_metadata_key", "s3_sse", "aws_profile", "vpm_data_dir")


def plan_fingerprint(settings: Settings, *, overwrite: bool) -> str:
    """A digest of everything a plan was made with: the target, the prefixes, the local folder, --overwrite
    and the credentials (hashed: no secret is kept or shown). Equal digests mean the same plan applies."""

    def secret(value) -> str:
        return value.get_secret_value() if value is not None else ""

    credentials = hashlib.sha256("\0".join(
        secret(getattr(settings, name)) for name in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
    ).encode()).hexdigest()
    fields = {name: str(getattr(settings, name) or "") for name in _PLAN_SETTINGS}
    fields.update(overwrite=bool(overwrite), credentials=credentials)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
