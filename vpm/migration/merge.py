"""How a local product meets the bucket's product with the same id. Pure, so the plan and the execution (on a
fresh read of the bucket, just before writing) decide the same way.

- not in the bucket: added (insert-if-absent, so a product someone else adds meanwhile is never replaced);
- identical (ignoring `revision` and `updated_at`, which only count edits): left alone;
- different: a conflict, left as the bucket has it, unless `overwrite` (then replaced);
- held back: a file of the product is in conflict, so its row must not point at the bucket's other bytes.
Bucket products that are not local are never touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from vpm.core.catalog import Product

# Fields that say how often a row was edited, not what the product is.
_BOOKKEEPING = {"revision", "updated_at"}


def same_product(a: Product, b: Product) -> bool:
    return a.model_dump(mode="json", exclude=_BOOKKEEPING) == b.model_dump(mode="json", exclude=_BOOKKEEPING)


@dataclass(frozen=True)
class Merge:
    to_add: list[Product] = field(default_factory=list)
    to_replace: list[Product] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    held_back: list[str] = field(default_factory=list)

    @property
    def to_write(self) -> list[Product]:
        return self.to_add + self.to_replace


def merge_products(bucket: Mapping[str, Product], local: Sequence[Product], *, overwrite: bool,
                   held_back: Iterable[str] = ()) -> Merge:
    """Decide for each local product, given the bucket's products with the same ids (`bucket`, by id)."""
    hold = set(held_back)
    merge = Merge()
    for product in local:
        theirs = bucket.get(product.id)
        if theirs is not None and same_product(theirs, product):
            merge.unchanged.append(product.id)
        elif product.id in hold:
            merge.held_back.append(product.id)
        elif theirs is None:
            merge.to_add.append(product)
        elif overwrite:
            merge.to_replace.append(product)
        else:
            merge.conflicts.append(product.id)
    return merge
