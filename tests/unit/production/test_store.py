"""The production store: queue order, leases, one verdict per reviewer and request, concurrent claims."""

from __future__ import annotations

import threading
import uuid

import pytest
from store_fill import fill

from readl.production.store import Store, VerdictConflict


def test_the_most_uncertain_image_comes_first_and_a_reload_shows_the_same(store, tmp_path, sample_dir):
    h = fill(store, tmp_path / "home", sample_dir, [0.9, 0.45, 0.1, 0.7])
    first = store.claim_next("alice")
    assert first.inspection.image_hash == h[1] and first.waiting == 4  # |0.45 - 0.5| smallest
    assert store.claim_next("alice").inspection.image_hash == h[1]  # held: shown again
    assert store.claim_next("bob").inspection.image_hash == h[3]  # the next most uncertain, not alice's
    assert store.claim_next("carol", order="newest").inspection.image_hash == h[2]  # h[3] is bob's
    with pytest.raises(ValueError, match="order"):
        store.claim_next("alice", order="random")


def test_an_expired_lease_frees_the_image(store, tmp_path, sample_dir):
    h = fill(store, tmp_path / "home", sample_dir, [0.5])
    assert store.claim_next("alice", lease_s=-1).inspection.image_hash == h[0]
    assert store.claim_next("bob").inspection.image_hash == h[0]
    assert store.claim_next("alice") is None  # bob holds it now


def test_a_retried_request_is_stored_once_and_a_second_verdict_is_refused(store, tmp_path, sample_dir):
    h = fill(store, tmp_path / "home", sample_dir, [0.5, 0.6])
    row, created = store.add_verdict(h[0], "alice", "ng", "req-00000001", defect_type="bent", note="left edge")
    again, created_again = store.add_verdict(h[0], "alice", "ng", "req-00000001", defect_type="bent")
    assert created and not created_again and again.id == row.id
    with pytest.raises(VerdictConflict):
        store.add_verdict(h[0], "alice", "ok", "req-00000002")
    store.add_verdict(h[0], "bob", "ok", "req-00000003")  # another reviewer may (export reports the conflict)
    with pytest.raises(KeyError):
        store.add_verdict("0" * 64, "alice", "ok", "req-00000004")
    with pytest.raises(ValueError, match="ok"):
        store.add_verdict(h[1], "alice", "maybe", "req-00000005")
    assert store.counts() == {"inspected": 2, "unreadable": 0, "verdicts": 2, "waiting": 1}
    assert [(v.reviewer, v.verdict, v.defect_type, v.model_version) for _, v in store.reviewed()] == [
        ("alice", "ng", "bent", "readl/1"),
        ("bob", "ok", None, "readl/1"),
    ]


def test_two_reviewers_claiming_at_once_never_get_the_same_image(store_url, tmp_path, sample_dir):
    """Two threads, each with its own engine (two server processes' worth), claim at the same moment (a barrier per
    round) and decide until the queue is empty: every image gets exactly one verdict, and each reviewer half."""
    url = store_url
    hashes = fill(Store(url), tmp_path / "home", sample_dir, [0.3 + 0.02 * i for i in range(20)])
    decided: dict[str, list[str]] = {"alice": [], "bob": []}
    start = threading.Barrier(2)

    def review(name: str) -> None:
        store = Store(url)
        for _ in range(11):  # both claim at the same moment in every round (20 images: 10 rounds + an empty one)
            start.wait(30)
            if (item := store.claim_next(name)) is not None:
                store.add_verdict(item.inspection.image_hash, name, "ok", uuid.uuid4().hex)
                decided[name].append(item.inspection.image_hash)

    threads = [threading.Thread(target=review, args=(n,)) for n in decided]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    both = decided["alice"] + decided["bob"]
    assert sorted(both) == sorted(hashes), "every image decided exactly once"
    assert len(decided["alice"]) == len(decided["bob"]) == 10, "each concurrent claim got an image of its own"
    assert Store(url).counts()["verdicts"] == 20
