"""RunStats: what one run did, counted by the runner and its writer."""

from __future__ import annotations

__all__ = ["RunStats"]


class RunStats:
    """What a run did: steps run and skipped, bytes read and written, XLA compilations,
    the prefetch depth it ran with, wall time, and the seconds spent waiting for reads,
    for the devices (kernel dispatch and wait) and for writes and records. The pipeline
    turns them into the public :class:`jaxwren.engine.report.RunReport`."""

    def __init__(self) -> None:
        self.steps_run = 0
        self.steps_skipped = 0
        self.bytes_read = 0
        self.bytes_written = 0
        self.compiles = 0
        self.prefetch = 0
        self.seconds = 0.0
        self.read_seconds = 0.0  # issuing tile reads and waiting for them
        self.compute_seconds = 0.0  # kernel dispatch and waits for the devices
        self.write_seconds = 0.0  # waiting for output writes and their records
        # {output url: {chunk key: storage generation}} of the chunks this process wrote
        # under a completion record (what the records vouch for; checked at commit)
        self.stamps: dict[str, dict[str, str]] = {}

    def __repr__(self) -> str:
        return (
            f"RunStats(steps_run={self.steps_run}, steps_skipped={self.steps_skipped}, "
            f"bytes_read={self.bytes_read}, bytes_written={self.bytes_written}, "
            f"compiles={self.compiles}, prefetch={self.prefetch}, seconds={self.seconds:.3f}, "
            f"read={self.read_seconds:.3f}, compute={self.compute_seconds:.3f}, "
            f"write={self.write_seconds:.3f})"
        )
