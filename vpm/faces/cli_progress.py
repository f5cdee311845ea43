"""The command line's one progress bar: tqdm on stderr, fed by the core's progress callbacks.

Every long job in vpm reports `progress(done, total, message="")` (imports, indexing, evaluation, the cluster
path); the migration counts files and bytes, so its callback is `files_and_bytes`. The bar appears on the first
report with a total, so no empty "0it" bar is drawn before anyone knows how much there is to do; a report that
counts from the start again (the next phase of one job) starts a new bar.
"""

from __future__ import annotations

import sys


class ProgressBar:
    def __init__(self, unit: str = "it", *, desc: str | None = None, byte_sizes: bool = False, leave: bool = True,
                 terminal_only: bool = False):
        self.unit, self.desc, self.byte_sizes, self.leave = unit, desc, byte_sizes, leave
        self.disable = None if terminal_only else False  # tqdm: None hides the bar when stderr is not a terminal
        self.bar = None

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if self.bar is not None and done < self.bar.n:
            # A new phase counting from the start again (an import, then fitting the score on the same photos): a bar
            # of its own, so its rate and time left are its own, not the last phase's.
            self.bar.close()
            self.bar = None
        if self.bar is None:
            if not total:
                return
            from tqdm import tqdm

            units = {"unit": "B", "unit_scale": True, "unit_divisor": 1024} if self.byte_sizes else {"unit": self.unit}
            self.bar = tqdm(total=total, desc=self.desc, file=sys.stderr, disable=self.disable, dynamic_ncols=True,
                            leave=self.leave, **units)
        if self.bar.total != total:
            self.bar.total = total
        self.bar.n = done
        if message:
            self.bar.set_postfix_str(message, refresh=False)
        self.bar.refresh()

    def files_and_bytes(self, done_files: int, total_files: int, done_bytes: int, total_bytes: int) -> None:
        """The migration's report: bytes drive the bar (rate and ETA) with files beside it; a bar counting files
        (planning) takes the files alone."""
        if self.byte_sizes:
            self(done_bytes, total_bytes, f"{done_files}/{total_files} files")
        else:
            self(done_files, total_files)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
