"""The production store: inspected images and inspectors' verdicts, in one database through SQLAlchemy.

Location (:func:`store_url`): ``--db`` / ``$READL_PRODUCTION_DB``, else the SQLite file ``<home>/production.db``
where ``home`` is ``--home`` / ``$READL_PRODUCTION_HOME`` / ``data/production``. In production, a Postgres URL
(``postgresql+psycopg://readl@db-host/readl``; ``pip install 'psycopg[binary]'``) shared by the inspect workers
and the review server.

Tables:

* ``inspections``: one row per image CONTENT (``image_hash`` = sha256 of the file's bytes): where it came from,
  the stored copy, the predict record (JSON, :func:`readl.predictor.prediction_record`), P(Yes), the decision and
  its threshold, the model version, the overlay PNG; or the error that made it unreadable. ``claimed_by`` /
  ``claimed_until``: a reviewer's lease (:data:`LEASE_S`) so two reviewers of one queue get different images.
* ``verdicts``: one row per (image, reviewer): ``ok`` / ``ng``, defect type, note, the model version whose decision
  was reviewed, time, and the client's ``request_id`` (unique: a retried POST is stored once).

Durability: a verdict is acknowledged after its transaction commits. On SQLite the journal is WAL with
``synchronous=FULL`` (a committed row survives a killed server or host) and writers wait up to 30 s for each
other (``busy_timeout``) instead of failing. Times are naive UTC (``datetime.now(UTC)`` without tzinfo), so
SQLite and Postgres compare them alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    case,
    create_engine,
    event,
    exists,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

__all__ = [
    "LEASE_S",
    "Inspection",
    "Store",
    "Verdict",
    "VerdictConflict",
    "production_home",
    "store_url",
    "utcnow",
]

LEASE_S = 600
"""Seconds a reviewer holds the image the page shows (ours): after it, another reviewer may get the image."""

VERDICTS = ("ok", "ng")


def utcnow() -> datetime:
    """Now, naive UTC (module docstring)."""
    return datetime.now(UTC).replace(tzinfo=None)


def production_home(home: str | os.PathLike[str] | None = None) -> Path:
    """``home``, else ``$READL_PRODUCTION_HOME``, else ``data/production``, made absolute: the folder of the stored
    image copies, the records and overlays, and the default SQLite file."""
    return Path(home or os.environ.get("READL_PRODUCTION_HOME") or "data/production").expanduser().resolve()


def store_url(db: str | None = None, home: str | os.PathLike[str] | None = None) -> str:
    """The SQLAlchemy URL: ``db``, else ``$READL_PRODUCTION_DB``, else ``sqlite:///<home>/production.db``."""
    if db or os.environ.get("READL_PRODUCTION_DB"):
        return db or os.environ["READL_PRODUCTION_DB"]
    return f"sqlite:///{production_home(home) / 'production.db'}"


class _Base(DeclarativeBase):
    pass


class Inspection(_Base):
    """One inspected image (module docstring)."""

    __tablename__ = "inspections"

    image_hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex of the file's bytes
    origin: Mapped[str] = mapped_column(Text)  # the intake path or s3:// URL it was first seen at
    image_path: Mapped[str] = mapped_column(Text)  # the stored copy (<home>/images/<hash>.<ext>)
    inspected_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    model_version: Mapped[str | None] = mapped_column(String(200))
    record: Mapped[dict | None] = mapped_column(JSON(none_as_null=True))  # predict's JSON record; None when unreadable
    error: Mapped[str | None] = mapped_column(Text)  # why the image could not be predicted
    score: Mapped[float | None] = mapped_column(Float)  # P(Yes), [0, 1]
    decision: Mapped[str | None] = mapped_column(String(16))  # anomalous | normal
    threshold: Mapped[float | None] = mapped_column(Float)  # the decision threshold on P(Yes)
    margin: Mapped[float | None] = mapped_column(Float, index=True)  # |decision score - threshold|: uncertainty
    overlay_path: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime)


class Verdict(_Base):
    """One inspector's verdict on one image (module docstring)."""

    __tablename__ = "verdicts"
    __table_args__ = (UniqueConstraint("image_hash", "reviewer", name="one_verdict_per_reviewer"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_hash: Mapped[str] = mapped_column(ForeignKey("inspections.image_hash"), index=True)
    reviewer: Mapped[str] = mapped_column(String(100))
    verdict: Mapped[str] = mapped_column(String(2))  # ok | ng
    defect_type: Mapped[str | None] = mapped_column(String(100))
    note: Mapped[str | None] = mapped_column(Text)
    model_version: Mapped[str | None] = mapped_column(String(200))  # whose decision the reviewer saw
    decided_at: Mapped[datetime] = mapped_column(DateTime)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)


class VerdictConflict(ValueError):
    """The reviewer already gave this image another verdict (a second request, not a retry of the first)."""


def _waiting():
    """``SELECT count(*)`` of the readable images without a verdict (the review queue's length)."""
    no_verdict = ~exists().where(Verdict.image_hash == Inspection.image_hash)
    return select(func.count()).select_from(Inspection).where(Inspection.record.is_not(None), no_verdict)


@dataclass
class QueueItem:
    """What the review page shows for one image: the inspection row's fields and how many images wait."""

    inspection: Inspection
    waiting: int


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Store:
    """The production database (module docstring): open with ``Store(url)``; tables are created if absent.

    Raises:
        sqlalchemy.exc.ArgumentError: ``url`` is not a database URL.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        _Base.metadata.create_all(self.engine)
        self.session = sessionmaker(self.engine, expire_on_commit=False)

    def known(self) -> set[str]:
        """Hashes of every image already inspected (predicted or found unreadable)."""
        with self.session() as s:
            return set(s.scalars(select(Inspection.image_hash)))

    def add_inspection(self, row: dict[str, Any]) -> bool:
        """Insert one :class:`Inspection` (keys = its columns); False when the image was already there (also when an
        overlapping inspect run stored it first)."""
        try:
            with self.session() as s, s.begin():
                if s.get(Inspection, row["image_hash"]) is not None:
                    return False
                s.add(Inspection(**row))
        except IntegrityError:
            return False
        return True

    def inspection(self, image_hash: str) -> Inspection | None:
        with self.session() as s:
            return s.get(Inspection, image_hash)

    def claim_next(self, reviewer: str, order: str = "uncertainty", lease_s: float = LEASE_S) -> QueueItem | None:
        """Lease the next image without a verdict to ``reviewer`` and return it (None: the queue is empty).

        The image this reviewer already holds comes first (a reload shows it again); then images nobody holds,
        by ``order``: ``uncertainty`` = ``margin`` (|decision score - threshold|) smallest first, ``newest`` = last
        inspected first. One UPDATE ... WHERE image_hash = (SELECT ... LIMIT 1 FOR UPDATE SKIP LOCKED): two reviewers
        asking at once never get the same image (SQLite serialises the statement; Postgres skips locked rows).

        Raises:
            ValueError: an unknown ``order``.
        """
        if order not in ("uncertainty", "newest"):
            raise ValueError(f"order {order!r}: use 'uncertainty' or 'newest'")
        now = utcnow()
        open_ = (
            Inspection.record.is_not(None)
            & ~exists().where(Verdict.image_hash == Inspection.image_hash)
            & (
                Inspection.claimed_until.is_(None)
                | (Inspection.claimed_until < now)
                | (Inspection.claimed_by == reviewer)
            )
        )
        mine_first = case((Inspection.claimed_by == reviewer, 0), else_=1)
        ranking = (
            [Inspection.margin, Inspection.inspected_at] if order == "uncertainty" else [Inspection.inspected_at.desc()]
        )
        pick = (
            select(Inspection.image_hash)
            .where(open_)
            .order_by(mine_first, *ranking, Inspection.image_hash)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        claim = (
            update(Inspection)
            .where(Inspection.image_hash == pick)
            .values(claimed_by=reviewer, claimed_until=now + timedelta(seconds=lease_s))
            .returning(Inspection.image_hash)
        )
        with self.session() as s, s.begin():
            got = s.execute(claim).scalar_one_or_none()
            if got is None:
                return None
            item = s.get(Inspection, got)
            waiting = s.scalar(_waiting())
        return QueueItem(item, int(waiting or 0))

    def add_verdict(
        self,
        image_hash: str,
        reviewer: str,
        verdict: str,
        request_id: str,
        defect_type: str | None = None,
        note: str | None = None,
    ) -> tuple[Verdict, bool]:
        """Store one verdict; ``(verdict, created)``. A retried request (same ``request_id``) returns the stored
        row with ``created=False``. The reviewer's lease on the image ends.

        Raises:
            KeyError: no such inspected image.
            ValueError: ``verdict`` not ``ok`` / ``ng``.
            VerdictConflict: this reviewer already gave this image a verdict under another request.
        """
        if verdict not in VERDICTS:
            raise ValueError(f"verdict {verdict!r}: use 'ok' or 'ng'")
        try:
            with self.session() as s, s.begin():
                insp = s.get(Inspection, image_hash)
                if insp is None or insp.record is None:
                    raise KeyError(image_hash)
                row = Verdict(
                    image_hash=image_hash,
                    reviewer=reviewer,
                    verdict=verdict,
                    defect_type=(defect_type or None) if verdict == "ng" else None,
                    note=note or None,
                    model_version=insp.model_version,
                    decided_at=utcnow(),
                    request_id=request_id,
                )
                s.add(row)
                s.flush()  # the unique constraints fire here
                s.execute(
                    update(Inspection)
                    .where(Inspection.image_hash == image_hash, Inspection.claimed_by == reviewer)
                    .values(claimed_until=None)
                )
            return row, True
        except IntegrityError:
            pass
        with self.session() as s:
            same = s.scalar(select(Verdict).where(Verdict.request_id == request_id))
            if same is not None and same.image_hash == image_hash and same.reviewer == reviewer:
                return same, False
            raise VerdictConflict(f"{reviewer} already gave image {image_hash[:12]} a verdict")

    def reviewed(self) -> list[tuple[Inspection, Verdict]]:
        """Every verdict with its image's inspection, oldest verdict first."""
        with self.session() as s:
            rows = s.execute(
                select(Inspection, Verdict)
                .join(Verdict, Verdict.image_hash == Inspection.image_hash)
                .order_by(Verdict.decided_at, Verdict.id)
            )
            return [(i, v) for i, v in rows]

    def counts(self) -> dict[str, int]:
        """``inspected``, ``unreadable``, ``verdicts``, ``waiting`` (readable images without a verdict)."""
        with self.session() as s:
            n = s.scalar(select(func.count()).select_from(Inspection)) or 0
            bad = s.scalar(select(func.count()).select_from(Inspection).where(Inspection.record.is_(None))) or 0
            v = s.scalar(select(func.count()).select_from(Verdict)) or 0
            waiting = s.scalar(_waiting()) or 0
        return {"inspected": n, "unreadable": bad, "verdicts": v, "waiting": waiting}
