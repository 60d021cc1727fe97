"""The small-artifact cache: bounded by the total of its bodies, least recently used
out first, large files never kept."""

from __future__ import annotations

from enot_builder.file_cache import SmallFileCache


def test_least_recently_used_goes_first_within_the_byte_bound() -> None:
    cache = SmallFileCache(max_bytes=100, max_item_bytes=60)
    assert cache.put("a", b"a" * 40, {"Content-Type": "application/octet-stream"})
    assert cache.put("b", b"b" * 40, {})
    assert cache.get("a").body == b"a" * 40  # a is now the most recently used
    assert cache.put("c", b"c" * 40, {})  # 120 > 100: b goes, not a
    assert cache.get("b") is None
    assert (cache.get("a").headers, cache.get("c").body) == \
        ({"Content-Type": "application/octet-stream"}, b"c" * 40)
    assert (len(cache), cache.size) == (2, 80)
    assert (cache.hits, cache.misses) == (3, 1)


def test_large_files_are_never_kept() -> None:
    cache = SmallFileCache(max_bytes=100, max_item_bytes=60)
    assert not cache.fits(61) and cache.fits(60)
    assert not cache.put("big", b"x" * 61, {})
    assert cache.get("big") is None and cache.size == 0


def test_one_entry_may_push_out_several_and_replacing_counts_once() -> None:
    cache = SmallFileCache(max_bytes=100, max_item_bytes=100)
    for key in "abcde":
        cache.put(key, b"x" * 20, {})
    assert cache.size == 100
    cache.put("big", b"y" * 70, {})
    assert sorted(cache._entries) == ["big", "e"] and cache.size == 90
    cache.put("e", b"z" * 30, {})  # replacing: the old body no longer counts
    assert cache.size == 100 and len(cache) == 2
    cache.drop("big")
    cache.drop("missing")
    assert (cache.size, len(cache)) == (30, 1)


def test_a_cache_of_zero_bytes_keeps_nothing() -> None:
    cache = SmallFileCache(max_bytes=0, max_item_bytes=1024)
    assert not cache.fits(1)
    assert not cache.put("a", b"a", {}) and len(cache) == 0


def test_an_alias_names_an_entry_while_it_is_kept() -> None:
    cache = SmallFileCache(max_bytes=100, max_item_bytes=100)
    assert not cache.alias("/download/1", "a")  # no entry yet
    cache.put("a", b"a" * 60, {})
    assert cache.alias("/download/1", "a") and cache.alias("/download/2", "a")
    assert cache.get("/download/1").body == b"a" * 60
    cache.put("b", b"b" * 60, {})  # a goes, and its names with it
    assert cache.get("/download/1") is None and cache.get("/download/2") is None
    assert cache._aliases == {} and cache._names == {}
    cache.alias("/download/3", "b")
    cache.put("b", b"c" * 10, {})  # replaced: the alias named the old body
    assert cache.get("/download/3") is None and cache.get("b").body == b"c" * 10
